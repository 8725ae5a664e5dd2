"""Ctrl-C, SIGINT and SIGTERM stop the orchestrator cleanly, and none of them can be lost.

A handler that only raises KeyboardInterrupt is not enough: Python swallows an exception raised while it runs
an at-fork hook (`logging` registers one; every run of a command forks) or a finalizer, printing "Exception
ignored" and going on. So the handler also records the request, and the loops that wait call `check()`, which
raises it again at the next safe point. The swallowed one is not printed: it is recorded, not lost.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

_requested: int | None = None


def _handle(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = signum
    raise KeyboardInterrupt


def _unraisable(event: Any) -> None:
    if not (isinstance(event.exc_value, KeyboardInterrupt) and _requested is not None):
        sys.__unraisablehook__(event)


def install() -> None:
    """Takes over SIGINT and SIGTERM; also when SIGINT was inherited ignored (a background job of a script),
    which Python would otherwise keep, losing `kill -INT`."""
    global _requested
    _requested = None
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    sys.unraisablehook = _unraisable


def request() -> None:
    """Asks every loop that checks to stop (the workers, when the research loop itself fails)."""
    global _requested
    if _requested is None:
        _requested = signal.SIGINT


def clear() -> None:
    global _requested
    _requested = None


def requested() -> bool:
    return _requested is not None


def check() -> None:
    """Raises KeyboardInterrupt if a stop was asked for, even if the first raise was swallowed."""
    if _requested is not None:
        raise KeyboardInterrupt
