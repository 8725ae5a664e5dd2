"""The executor: experiments in flight at once, one per resource slot (slots.py), on worker threads.

The work of an experiment is waiting on subprocesses, so threads are enough; each records its runs in the
ledger through its own connection as they happen. The research loop (engine.py) stays the only proposer and
the only observer: it starts work when a slot is idle and collects what finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from rsi import interrupt
from rsi.slots import Slot, using

Work = Callable[[], list[int]]  # measures one experiment (and what follows from it); returns the ids it finished


class Workers:
    def __init__(self, slots: Sequence[Slot]) -> None:
        self.idle_slots = list(slots)
        self.busy: dict[Future[list[int]], Slot] = {}
        self.pool = ThreadPoolExecutor(len(slots), thread_name_prefix="rsi-worker")

    def idle(self) -> bool:
        return bool(self.idle_slots)

    def running(self) -> bool:
        return bool(self.busy)

    def start(self, work: Work) -> None:
        slot = self.idle_slots.pop(0)

        def in_slot() -> list[int]:
            with using(slot):
                return work()

        self.busy[self.pool.submit(in_slot)] = slot

    def collect(self, timeout: float) -> list[int]:
        """Waits up to `timeout` for work to finish; the ids it finished. A worker's error is raised here."""
        if self.busy:
            wait(self.busy, timeout=timeout, return_when=FIRST_COMPLETED)
        finished: list[int] = []
        for future in [f for f in self.busy if f.done()]:
            self.idle_slots.append(self.busy.pop(future))
            finished.extend(future.result())
        return finished

    def stop(self) -> None:
        """After an error or an interrupt: every worker's run is stopped (they check for a stop request while
        they wait), and the threads are joined, so nothing runs on once the research has returned."""
        asked_here = not interrupt.requested()
        interrupt.request()
        try:
            self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            if asked_here:
                interrupt.clear()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
