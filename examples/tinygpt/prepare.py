"""Frozen: builds the corpus, a byte-level text of the Python standard library's own top-level modules.

Nothing is downloaded: the same Python gives the same bytes. Files are split whole into train, validation
and test (every 10th file from the 5th is validation, every 10th from the first is test), so the test text
is code the model never saw, not held-out lines of files it did. Run once per research as `[task] setup`.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

SPLITS = ("train", "val", "test")


def data_dir() -> Path:
    """Where the splits live: rsi's shared cache for the research, or a local folder when run by hand."""
    return Path(os.environ.get("RSI_CACHE_DIR", ".cache")) / "tinygpt"


def sources() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in stdlib.glob("*.py") if p.is_file())


def split_of(index: int) -> str:
    return "test" if index % 10 == 0 else "val" if index % 10 == 5 else "train"


def main() -> None:
    parts: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    for i, path in enumerate(sources()):
        parts[split_of(i)].append(path.read_bytes())
    out = data_dir()
    out.mkdir(parents=True, exist_ok=True)
    corpus = hashlib.sha256()
    for split in SPLITS:
        data = b"".join(parts[split])
        corpus.update(data)
        (out / f"{split}.bin").write_bytes(data)
        print(f"{split}: {len(parts[split])} files, {len(data)} bytes")
    total = sum(len(b) for p in parts.values() for b in p)
    print(f"corpus: {total} bytes, sha256 {corpus.hexdigest()}")


if __name__ == "__main__":
    main()
