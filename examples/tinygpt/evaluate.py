"""Frozen: scores the model that train.py saved, in bits per byte on a split it names.

It loads the traced model (model.pt) and never imports train.py, so an edit to train.py cannot change how it
is scored. `--split val` is the selection metric; `--split test` is the held-out metric no proposer sees.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from prepare import data_dir

EVAL_BYTES = 1 << 15  # the first 32 KiB of the split: the same bytes for every candidate


def bits_per_byte(split: str) -> float:
    model = torch.jit.load("model.pt", map_location="cpu").eval()
    block = int(json.loads(Path("model.json").read_text())["block_size"])
    data = torch.frombuffer(bytearray((data_dir() / f"{split}.bin").read_bytes()[: EVAL_BYTES + 1]), dtype=torch.uint8)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, EVAL_BYTES - block + 1, block):
            x = data[start : start + block].long().unsqueeze(0)
            y = data[start + 1 : start + 1 + block].long()
            logits = model(x)[0]
            if not torch.isfinite(logits).all():
                return math.nan
            total += F.cross_entropy(logits, y, reduction="sum").item()
            count += block
    return total / count / math.log(2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", choices=("val", "test"), default="val")
    split = ap.parse_args().split
    print(f"{split}_bpb: {bits_per_byte(split):.6f}")


if __name__ == "__main__":
    main()
