"""The two sizes of a chaos run, the settings its processes get, and its fault schedule.

A fault is one of: a worker or a scheduler SIGKILLed (and started again after `down_s`), the
RabbitMQ node restarted, PostgreSQL restarted. PATCHes of users whose message is in flight are
the fourth kind; they are sent in a burst shortly after each wave's instant, not scheduled here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Literal

Action = Literal["kill_worker", "kill_scheduler", "restart_rabbitmq", "restart_postgres"]

WAVE_GAP_S = 60  # waves are whole UTC minutes: 09:00 local falls on a whole minute everywhere


@dataclass(frozen=True)
class Profile:
    name: str
    waves: int
    per_wave: int
    worker_kills: int
    scheduler_kills: int
    rabbitmq_restarts: int
    postgres_restarts: int
    # Share of a wave's in-flight users PATCHed, and the mix of edits (name, zone, birthday).
    patch_share: float
    patch_weights: tuple[float, float, float]
    # Faults come in the first seconds after each wave's instant, while its messages move.
    busy_s: float
    # After the faults stop, how long every occasion has to finish before the check.
    drain_s: float
    worker_concurrency: int
    simulator_latency_ms: str

    @property
    def messages(self) -> int:
        return self.waves * self.per_wave

    def without_restarts(self) -> Profile:
        return replace(self, rabbitmq_restarts=0, postgres_restarts=0)


SMALL = Profile(
    name="small",
    waves=2,
    per_wave=100,
    worker_kills=3,
    scheduler_kills=1,
    rabbitmq_restarts=1,
    postgres_restarts=1,
    patch_share=0.3,
    patch_weights=(0.4, 0.35, 0.25),
    busy_s=12,
    drain_s=90,
    worker_concurrency=5,
    simulator_latency_ms="50-400",
)

FULL = Profile(
    name="full",
    waves=5,
    per_wave=400,
    worker_kills=14,
    scheduler_kills=6,
    rabbitmq_restarts=2,
    postgres_restarts=2,
    patch_share=0.06,
    patch_weights=(0.4, 0.35, 0.25),
    busy_s=15,
    drain_s=240,
    worker_concurrency=20,
    simulator_latency_ms="20-300",
)

# The service's settings for the run: short, so retries, leases and breaker resets happen
# within seconds (the tests' FAST settings, with a few-second lease so a killed worker's
# rows come back inside the run).
SERVICE_ENV = {
    "MESSAGE_SERVICE_TIMEOUT_MS": "2000",
    "MESSAGE_VISIBILITY_TIMEOUT_S": "10",
    "SCHEDULER_INTERVAL_MS": "200",
    "SCHEDULER_BATCH_SIZE": "500",
    "RETRY_BASE_DELAY_MS": "200",
    "RETRY_MAX_DELAY_MS": "2000",
    "MAX_DELIVERY_ATTEMPTS": "25",
    "CIRCUIT_BREAKER_FAILURE_THRESHOLD": "5",
    "CIRCUIT_BREAKER_RESET_TIMEOUT_MS": "1000",
    "SHUTDOWN_GRACE_S": "5",
    "RATE_LIMIT_PER_MINUTE": "0",
    "LOG_LEVEL": "info",
    "LOG_FORMAT": "json",
}

# The simulator as the issue asks: 20% 500s, 5% hangs, 1% accepted and then never answered.
SIMULATOR_ENV = {
    "SIMULATOR_FAILURE_RATE_500": "0.2",
    "SIMULATOR_HANG_RATE": "0.05",
    "SIMULATOR_ACCEPT_THEN_HANG_RATE": "0.01",
    "SIMULATOR_HANG_S": "30",
    # Its log of accepted deliveries is what the ledger is checked against: keep all of it.
    "SIMULATOR_MAX_DELIVERIES": "100000",
}


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds after the first wave's instant
    action: Action
    down_s: float = 0.0  # how long a killed process stays down before it is started again


def fault_plan(profile: Profile, rng: random.Random) -> list[Fault]:
    """Faults inside the seconds after each wave's instant, while its messages are in flight:
    kills at random moments, shared out over the waves in turn; each RabbitMQ restart two
    seconds into a wave (its messages just published) and each PostgreSQL restart five seconds
    into another one, so every outage is its own and meets messages in every state."""
    faults: list[Fault] = []
    kills: tuple[tuple[Action, int], ...] = (
        ("kill_worker", profile.worker_kills),
        ("kill_scheduler", profile.scheduler_kills),
    )
    for action, count in kills:
        for i in range(count):
            at = (i % profile.waves) * WAVE_GAP_S + rng.uniform(0.3, profile.busy_s)
            faults.append(Fault(at, action, rng.uniform(0.5, 3.0)))
    for i in range(profile.rabbitmq_restarts):
        faults.append(Fault((2 * i % profile.waves) * WAVE_GAP_S + 2.0, "restart_rabbitmq"))
    for i in range(profile.postgres_restarts):
        faults.append(Fault(((2 * i + 1) % profile.waves) * WAVE_GAP_S + 5.0, "restart_postgres"))
    return sorted(faults, key=lambda fault: fault.at_s)
