"""Circuit breaker guarding the external message service.

closed --(threshold consecutive failures)--> open --(reset timeout)--> half-open (one probe)
half-open --(probe succeeds)--> closed;  half-open --(probe fails)--> open again.

Callers pair every `acquire()` with exactly one of `record_success()`, `record_failure()` or
`release()` (the last when they ended up not calling the service), in a `finally` if need be:
a probe that is never reported keeps the breaker half-open and every other caller waiting.

While the breaker is open, `acquire()` waits instead of failing fast: a worker holding a
message has nothing better to do than to wait for the service, and waiting keeps the message
in hand instead of bouncing it through the queue. Time comes from the injected clock; waiting
sleeps for the remaining open time and wakes early on any transition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import IntEnum

import structlog

from birthday_scheduler.clock import Clock
from birthday_scheduler.errors import BirthdaySchedulerError

log = structlog.get_logger(__name__)


class CircuitState(IntEnum):
    """Values are what the `circuit_breaker_state{name}` gauge reports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpenError(BirthdaySchedulerError):
    """The breaker did not let a call through within the caller's time limit."""

    def __init__(self, name: str, retry_in_s: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry in {retry_in_s:.1f}s")
        self.name = name
        self.retry_in_s = retry_in_s


TransitionCallback = Callable[[str, CircuitState, CircuitState], None]

_EVENTS = {
    CircuitState.OPEN: "circuit.opened",
    CircuitState.HALF_OPEN: "circuit.half_opened",
    CircuitState.CLOSED: "circuit.closed",
}


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int,
        reset_timeout_s: float,
        clock: Clock,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout_s < 0:
            raise ValueError("reset_timeout_s must not be negative")
        self.name = name
        self._threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._on_transition = on_transition
        self._state = CircuitState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        # Replaced on every change: waiters hold the current one, so setting it wakes exactly
        # those who waited for this change and none of the later ones.
        self._changed = asyncio.Event()

    @property
    def state(self) -> CircuitState:
        """The current state; reading it moves open to half-open once the reset time passed."""
        if self._state is CircuitState.OPEN and self._open_remaining() <= 0:
            self._transition(CircuitState.HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    def seconds_until_retry(self) -> float:
        """How long until an open breaker lets a probe through; 0 when not open."""
        if self.state is CircuitState.OPEN:
            return self._open_remaining()
        return 0.0

    async def acquire(self, timeout_s: float | None = None) -> None:
        """Wait until a call may be made.

        Closed: returns at once. Open: waits out the reset timeout, then exactly one waiter
        becomes the half-open probe and the others wait for its outcome. With `timeout_s`,
        raises CircuitOpenError if no call could be made in that time.
        """
        if timeout_s is None:
            await self._acquire()
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._acquire()
        except TimeoutError:
            raise CircuitOpenError(self.name, self.seconds_until_retry()) from None

    async def _acquire(self) -> None:
        while True:
            state = self.state
            if state is CircuitState.CLOSED:
                return
            if state is CircuitState.HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return
            changed = self._changed
            # Open: sleep for the rest of the open time (woken early by any transition).
            # Half-open with a probe out: wait for its outcome, however long it takes.
            wait_s = self._open_remaining() if state is CircuitState.OPEN else None
            try:
                async with asyncio.timeout(wait_s):
                    await changed.wait()
            except TimeoutError:
                pass

    def record_success(self) -> None:
        state = self.state
        if state is CircuitState.HALF_OPEN:
            self._consecutive_failures = 0
            self._transition(CircuitState.CLOSED)
        elif state is CircuitState.CLOSED:
            self._consecutive_failures = 0
        # Open: a late success of a call started before the breaker opened is stale news;
        # only a probe may close the breaker.

    def record_failure(self) -> None:
        state = self.state
        self._consecutive_failures += 1
        if state is CircuitState.HALF_OPEN or (
            state is CircuitState.CLOSED and self._consecutive_failures >= self._threshold
        ):
            self._transition(CircuitState.OPEN)
        # Open already: late failures of calls made before it opened do not extend the wait.

    def release(self) -> None:
        """The caller acquired but made no call: free the probe slot for another waiter."""
        if self._state is CircuitState.HALF_OPEN and self._probe_in_flight:
            self._probe_in_flight = False
            self._notify()

    def _open_remaining(self) -> float:
        return self._opened_at + self._reset_timeout_s - self._clock.monotonic()

    def _transition(self, new: CircuitState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        self._probe_in_flight = False
        if new is CircuitState.OPEN:
            self._opened_at = self._clock.monotonic()
        if new is CircuitState.OPEN:
            log.warning(
                _EVENTS[new],
                name=self.name,
                previous=old.name.lower(),
                consecutive_failures=self._consecutive_failures,
                retry_in_s=self._reset_timeout_s,
            )
        else:
            log.info(
                _EVENTS[new],
                name=self.name,
                previous=old.name.lower(),
                consecutive_failures=self._consecutive_failures,
            )
        self._notify()
        if self._on_transition is not None:
            self._on_transition(self.name, old, new)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
