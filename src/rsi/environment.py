"""What a run ran on, recorded with every run: results are only comparable on comparable machines."""

from __future__ import annotations

import collections
import functools
import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Protocol

from rsi.errors import UserError

_PACKAGES = ("torch", "numpy", "scikit-learn", "jax", "optuna")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _gpu_names() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


@functools.cache
def _hardware() -> str:
    gpus = collections.Counter(_gpu_names())
    return "; ".join(
        [
            f"{_cpu_model()} x{os.cpu_count() or 0}",
            f"{_memory_gib()} GiB",
            ", ".join(f"{n} x {name}" for name, n in sorted(gpus.items())) or "no GPU",
        ]
    )


def node_kind() -> str:
    """The kind of machine a run ran on: a wall-clock budget buys the same work only on the same kind, so a
    research's noise estimate and comparisons stay on one kind. CPU model and count, memory, GPUs; or the
    node's `RSI_NODE_KIND`, for machines that differ in ways this cannot see, or that are equivalent."""
    return os.environ.get("RSI_NODE_KIND", "").strip() or _hardware()


class _Meta(Protocol):
    def get(self, key: str) -> str | None: ...
    def set(self, key: str, value: str) -> None: ...


def hold_kind(meta: _Meta, kind: str, where: str) -> None:
    """The first run fixes the research's kind of node; `where` is the machine the research now runs on, if
    it is not of that kind: the research stops there rather than mix its measurements."""
    known = meta.get("node_kind")
    if known is None:
        meta.set("node_kind", kind)
    elif known != kind:
        raise UserError(
            f"this research was measured on {known!r}, {where} is {kind!r}: a time budget buys different work "
            f"there, so its figures would not compare; start a new research here (a fresh clone, or `rsi fork`), "
            f"or set RSI_NODE_KIND={known!r} if the machines are equivalent"
        )


@functools.cache
def describe_environment() -> dict[str, str]:
    """Python, key package versions, CPU and visible GPUs (names only: nothing secret)."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": str(os.cpu_count() or 0),
        "host": platform.node(),
    }
    for name in _PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        env["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env
