"""What a run ran on, recorded with every run: results are only comparable on comparable machines."""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata

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
