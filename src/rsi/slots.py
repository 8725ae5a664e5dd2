"""Resource slots: what one experiment in flight may use when several run at once.

A slot is a set of CPU cores (enforced by affinity, and told to the task's thread pools through
OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS and friends; PyTorch sizes its pool from
OMP_NUM_THREADS) and optionally a set of GPUs (CUDA_VISIBLE_DEVICES). Every run of an experiment, and every
re-measurement of the champion it asks for, runs in that experiment's slot; the slot is recorded with the run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rsi.errors import UserError

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "RAYON_NUM_THREADS",
)


@dataclass(frozen=True)
class Slot:
    index: int
    cpus: tuple[int, ...]  # () for all of rsi's own, untouched
    gpus: tuple[int, ...] | None = None  # None: the machine's GPUs are left as they are

    @property
    def name(self) -> str:
        return f"w{self.index}"

    def env(self) -> dict[str, str]:
        env = {name: str(len(self.cpus)) for name in THREAD_VARIABLES} if self.cpus else {}
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpus))
        return env

    def describe(self) -> dict[str, str]:
        """What the ledger records with each run: where it ran."""
        out = {"slot": self.name, "cpus": ",".join(map(str, self.cpus)) or "all"}
        if self.gpus is not None:
            out["gpus"] = ",".join(map(str, self.gpus))
        return out


def plan(
    workers: int | None,
    gpus: Sequence[int] = (),
    gpus_per_experiment: int = 1,
    cpus_per_experiment: int | None = None,
    cores: Sequence[int] | None = None,
) -> tuple[list[Slot], str]:
    """The slots of a research, and a warning ("" for none). With GPUs and no worker count, one experiment
    per `gpus_per_experiment` GPUs. Cores are dealt out in blocks; more workers than cores share them."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if gpus:
        if len(set(gpus)) != len(gpus):
            raise UserError(f"--gpus {','.join(map(str, gpus))}: a GPU is listed twice")
        if gpus_per_experiment < 1 or gpus_per_experiment > len(gpus):
            raise UserError(f"gpus_per_experiment = {gpus_per_experiment}: between 1 and the {len(gpus)} GPUs given")
        groups = len(gpus) // gpus_per_experiment
        workers = workers or groups
        if workers > groups:
            raise UserError(
                f"{workers} workers need {workers * gpus_per_experiment} GPUs at {gpus_per_experiment} each; "
                f"{len(gpus)} given (--gpus)"
            )
    workers = workers or 1
    if workers == 1 and not gpus and cpus_per_experiment is None:
        return [Slot(0, ())], ""  # one experiment at a time: the machine is its own, as without rsi
    per = cpus_per_experiment or max(1, len(cores) // workers)
    if per > len(cores):
        raise UserError(f"cpus_per_experiment = {per}, but rsi may use {len(cores)} cores here")
    note = ""
    if workers * per > len(cores):
        note = (
            f"warning: {workers} workers x {per} cores is more than the {len(cores)} cores here: experiments share "
            "cores, so a wall-clock budget buys each of them less work than alone"
        )
    if gpus and not visible_gpus():
        gpu_note = (
            f"warning: --gpus {','.join(map(str, gpus))}, but this machine shows no GPU device (/dev/nvidia*, "
            "/dev/kfd): runs are given CUDA_VISIBLE_DEVICES all the same, and will find no GPU"
        )
        note = f"{note}\n{gpu_note}" if note else gpu_note
    slots = []
    for i in range(workers):
        mine = tuple(sorted({cores[(i * per + j) % len(cores)] for j in range(per)}))
        group = tuple(gpus[i * gpus_per_experiment : (i + 1) * gpus_per_experiment]) if gpus else None
        slots.append(Slot(i, mine, group))
    return slots, note


_current = threading.local()


@contextmanager
def using(slot: Slot) -> Iterator[None]:
    """The slot of everything this thread runs until the block ends."""
    previous = getattr(_current, "slot", None)
    _current.slot = slot
    try:
        yield
    finally:
        _current.slot = previous


def current() -> Slot | None:
    slot: Slot | None = getattr(_current, "slot", None)
    return slot


def visible_gpus() -> bool:
    """Whether the machine shows a GPU device node: NVIDIA's or AMD's (ROCm)."""
    dev = Path("/dev")
    return any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists()
