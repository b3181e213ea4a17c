from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from birthday_scheduler.clock import SystemClock
from birthday_scheduler.delivery.breaker import CircuitBreaker, CircuitOpenError, CircuitState
from support import eventually, holds

Transition = tuple[str, CircuitState, CircuitState]


class FakeClock:
    def __init__(self) -> None:
        self._monotonic = 1000.0
        self._start = datetime(2024, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._monotonic)

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds


def make(
    threshold: int = 3, reset_s: float = 30.0
) -> tuple[CircuitBreaker, FakeClock, list[Transition]]:
    clock = FakeClock()
    transitions: list[Transition] = []

    def on_transition(name: str, old: CircuitState, new: CircuitState) -> None:
        transitions.append((name, old, new))

    breaker = CircuitBreaker("message_service", threshold, reset_s, clock, on_transition)
    return breaker, clock, transitions


def trip(breaker: CircuitBreaker, times: int = 3) -> None:
    for _ in range(times):
        breaker.record_failure()


def state(breaker: CircuitBreaker) -> CircuitState:
    # A call, not the property, so that mypy does not narrow it across transitions.
    return breaker.state


async def finished(task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(2):
        await task


async def cancel(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _, transitions = make(threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is CircuitState.CLOSED
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert transitions == [("message_service", CircuitState.CLOSED, CircuitState.OPEN)]


def test_success_resets_the_consecutive_failure_count() -> None:
    breaker, _, transitions = make(threshold=3)
    trip(breaker, 2)
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    trip(breaker, 2)
    assert state(breaker) is CircuitState.CLOSED
    assert transitions == []


def test_open_turns_half_open_once_the_reset_timeout_passed() -> None:
    breaker, clock, transitions = make(reset_s=30.0)
    trip(breaker)
    clock.advance(29.5)
    assert state(breaker) is CircuitState.OPEN
    assert breaker.seconds_until_retry() == pytest.approx(0.5)
    clock.advance(0.5)
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.seconds_until_retry() == 0.0
    assert [new for _, _, new in transitions] == [CircuitState.OPEN, CircuitState.HALF_OPEN]


def test_late_results_while_open_change_nothing() -> None:
    breaker, _, transitions = make()
    trip(breaker)
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert len(transitions) == 1


async def test_closed_breaker_lets_calls_through_at_once() -> None:
    breaker, _, _ = make()
    async with asyncio.timeout(1):
        await breaker.acquire()
        await breaker.acquire()


async def test_only_one_probe_goes_through_while_half_open() -> None:
    breaker, clock, _ = make()
    trip(breaker)
    clock.advance(30)
    first = asyncio.create_task(breaker.acquire())
    second = asyncio.create_task(breaker.acquire())
    await eventually(lambda: first.done() or second.done(), within=2)
    await holds(lambda: [first.done(), second.done()].count(True) == 1)
    assert state(breaker) is CircuitState.HALF_OPEN
    await cancel(first, second)


async def test_probe_success_closes_and_releases_all_waiters() -> None:
    breaker, clock, transitions = make()
    trip(breaker)
    clock.advance(30)
    await breaker.acquire()  # the probe
    waiters = [asyncio.create_task(breaker.acquire()) for _ in range(3)]
    await holds(lambda: not any(task.done() for task in waiters))
    assert not any(task.done() for task in waiters)
    breaker.record_success()
    for task in waiters:
        await finished(task)
    assert state(breaker) is CircuitState.CLOSED
    assert transitions[-1] == ("message_service", CircuitState.HALF_OPEN, CircuitState.CLOSED)


async def test_probe_failure_reopens_and_waiters_wait_for_the_next_probe() -> None:
    breaker, clock, transitions = make(reset_s=30.0)
    trip(breaker)
    clock.advance(30)
    await breaker.acquire()  # the probe
    waiter = asyncio.create_task(breaker.acquire())
    await holds(lambda: not waiter.done())
    breaker.record_failure()
    await holds(lambda: not waiter.done())
    assert state(breaker) is CircuitState.OPEN
    assert breaker.seconds_until_retry() == pytest.approx(30.0)
    assert not waiter.done()
    clock.advance(30)
    assert state(breaker) is CircuitState.HALF_OPEN  # reading the state is the nudge
    await finished(waiter)  # the waiter became the next probe
    assert [new for _, _, new in transitions] == [
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
    ]


async def test_release_frees_the_probe_slot_for_another_waiter() -> None:
    breaker, clock, _ = make()
    trip(breaker)
    clock.advance(30)
    await breaker.acquire()  # the probe, which turns out to have nothing to send
    waiter = asyncio.create_task(breaker.acquire())
    await holds(lambda: not waiter.done())
    breaker.release()
    await finished(waiter)
    assert state(breaker) is CircuitState.HALF_OPEN
    other = asyncio.create_task(breaker.acquire())
    # The released waiter now holds the one probe slot.
    await holds(lambda: not other.done())
    await cancel(other)


async def test_open_waiter_is_released_after_the_clock_passes_the_reset_time() -> None:
    breaker, clock, _ = make(reset_s=30.0)
    trip(breaker)
    waiter = asyncio.create_task(breaker.acquire())
    await holds(lambda: not waiter.done())
    clock.advance(31)
    _ = breaker.state
    await finished(waiter)


async def test_open_waiter_sleeps_out_the_reset_time_on_a_real_clock() -> None:
    clock = SystemClock()
    breaker = CircuitBreaker("real", 1, 0.05, clock)
    breaker.record_failure()
    started = clock.monotonic()
    async with asyncio.timeout(5):
        await breaker.acquire()
    assert clock.monotonic() - started >= 0.04
    assert state(breaker) is CircuitState.HALF_OPEN


async def test_acquire_with_a_time_limit_raises_circuit_open() -> None:
    breaker, _, _ = make(reset_s=30.0)
    trip(breaker)
    with pytest.raises(CircuitOpenError) as info:
        await breaker.acquire(timeout_s=0.01)
    assert info.value.retry_in_s == pytest.approx(30.0)
    assert "message_service" in str(info.value)


def test_every_transition_is_logged() -> None:
    breaker, clock, _ = make(threshold=2)
    with capture_logs() as logs:
        trip(breaker, 2)
        clock.advance(30)
        _ = breaker.state
        breaker.record_success()
    assert [(entry["event"], entry["log_level"]) for entry in logs] == [
        ("circuit.opened", "warning"),
        ("circuit.half_opened", "info"),
        ("circuit.closed", "info"),
    ]
    assert all(entry["name"] == "message_service" for entry in logs)
    assert logs[0]["consecutive_failures"] == 2


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("x", 0, 1.0, FakeClock())
