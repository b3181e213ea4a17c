"""Turn many concurrent single-item calls into few batched ones.

`await batcher.submit(item)` waits until its item has gone out in a batch and returns that
item's own result. A batch leaves once `max_items` are waiting or `window_s` after its first
item arrived, whichever comes first (a window of 0 is the next turn of the event loop: what was
submitted in this one goes together); at most `max_in_flight` batches run at once, and items
that arrive meanwhile wait for the next one (so a busy batcher sends bigger batches, not more of
them). When a batch fails, every caller in it gets the error: none is dropped silently.

Pure asyncio, no I/O of its own: `run` does the work, given the items in arrival order, and
answers one result per item in the same order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

BatchRunner = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


class Batcher(Generic[T, R]):
    def __init__(
        self,
        run: BatchRunner[T, R],
        *,
        max_items: int,
        window_s: float,
        max_in_flight: int = 2,
    ) -> None:
        if max_items < 1 or max_in_flight < 1 or window_s < 0:
            raise ValueError("max_items and max_in_flight must be >= 1, window_s >= 0")
        self._run = run
        self._max_items = max_items
        self._window_s = window_s
        self._max_in_flight = max_in_flight
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        # Strong references: a task nobody holds may be collected mid-flight.
        self._running: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Batches running now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Items not yet in a running batch."""
        return len(self._waiting)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if len(self._waiting) >= self._max_items:
            self._dispatch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._window_s, self._on_timer)
        # A cancelled caller leaves its item in the batch: its result is simply not read.
        return await future

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiting and len(self._running) < self._max_in_flight:
            batch = self._waiting[: self._max_items]
            del self._waiting[: self._max_items]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._running.add(task)
            task.add_done_callback(self._on_done)
        if not self._waiting and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        # Items that waited out their window (or filled a batch) while every slot was busy go
        # now; younger ones keep their timer.
        if self._waiting and (self._timer is None or len(self._waiting) >= self._max_items):
            self._dispatch()

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} answered {len(results)} results")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every caller hears of it: each hands its message back
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
