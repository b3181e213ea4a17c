"""The batcher: each caller gets its own result, a full batch leaves at once, a failed batch
fails every caller in it, and busy slots make the next batch bigger instead of adding one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from birthday_scheduler.delivery.batcher import Batcher
from support import eventually, holds

NEVER = 3600.0  # a window no test waits out: batches leave because they are full


class Gated:
    """A batch runner that records each batch and holds it until the test opens the gate."""

    def __init__(self, *, fail: Exception | None = None, answers: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = fail
        self.answers = answers

    async def __call__(self, items: Sequence[int]) -> list[str]:
        self.batches.append(list(items))
        self.started.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        count = len(items) if self.answers is None else self.answers
        return [f"answer-{item}" for item in items][:count]


async def test_each_caller_gets_the_answer_for_its_own_item() -> None:
    run = Gated()
    batcher: Batcher[int, str] = Batcher(run, max_items=5, window_s=NEVER)
    answers = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert answers == [f"answer-{i}" for i in range(5)]
    assert run.batches == [[0, 1, 2, 3, 4]]


async def test_a_window_sends_what_has_gathered_when_it_ends() -> None:
    run = Gated()
    batcher: Batcher[int, str] = Batcher(run, max_items=100, window_s=0.001)
    answers = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
    assert answers == ["answer-0", "answer-1", "answer-2"]
    assert run.batches == [[0, 1, 2]]


async def test_a_failed_batch_fails_every_caller_in_it() -> None:
    run = Gated(fail=ConnectionError("database gone"))
    batcher: Batcher[int, str] = Batcher(run, max_items=3, window_s=NEVER)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert len(results) == 3
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_a_batch_answering_the_wrong_number_of_results_fails_every_caller() -> None:
    run = Gated(answers=2)
    batcher: Batcher[int, str] = Batcher(run, max_items=3, window_s=NEVER)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results), results


async def test_items_arriving_while_every_slot_is_busy_wait_and_go_out_together() -> None:
    run = Gated()
    run.gate.clear()
    batcher: Batcher[int, str] = Batcher(run, max_items=2, window_s=NEVER, max_in_flight=1)
    first = [asyncio.create_task(batcher.submit(i)) for i in range(2)]
    await run.started.wait()
    assert batcher.in_flight == 1
    later = [asyncio.create_task(batcher.submit(i)) for i in range(2, 6)]
    await eventually(lambda: batcher.waiting == 4, within=5)
    # Full batches, but the only slot is busy: none of them leaves.
    await holds(lambda: run.batches == [[0, 1]])
    run.gate.set()
    answers = await asyncio.gather(*first, *later)
    assert answers == [f"answer-{i}" for i in range(6)]
    assert run.batches == [[0, 1], [2, 3], [4, 5]]


async def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    run = Gated()
    run.gate.clear()
    batcher: Batcher[int, str] = Batcher(run, max_items=3, window_s=NEVER)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
    await run.started.wait()
    tasks[1].cancel()
    run.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == "answer-0"
    assert results[2] == "answer-2"
    assert isinstance(results[1], asyncio.CancelledError)


def test_nonsense_limits_are_refused() -> None:
    async def run(items: Sequence[int]) -> list[int]:
        return list(items)

    with pytest.raises(ValueError, match="max_items"):
        Batcher(run, max_items=0, window_s=0.001)
    with pytest.raises(ValueError, match="max_in_flight"):
        Batcher(run, max_items=1, window_s=0.001, max_in_flight=0)
