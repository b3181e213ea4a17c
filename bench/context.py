"""What every benchmark of a run shares: sizes, the code measured, its databases and processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.services import Code, Scope, Services


@dataclass(frozen=True)
class Profile:
    name: str
    api_seconds: float  # per wrk run, after a warm-up run of a fifth of it (at least 1 s)
    api_users: int  # preloaded for GET /users/{id}
    idle_users: int
    idle_ticks: int
    plan_due: int
    deliver: int
    deliver_100ms: int
    burst: int
    import_rows: int
    workers: int = 2
    # As in the issue's own delivery measurement (2 workers x 50); WORKER_CONCURRENCY's default
    # of 10 makes a 0 ms delivery latency-bound (one claim, send and outcome per slot at a time).
    worker_concurrency: int = 50
    latency_ms: int = 100


FULL = Profile(
    name="full",
    api_seconds=10,
    api_users=100_000,
    idle_users=1_000_000,
    idle_ticks=50,
    plan_due=100_000,
    deliver=20_000,
    deliver_100ms=10_000,
    burst=10_000,
    import_rows=1_000_000,
)
SMALL = Profile(
    name="small",
    api_seconds=1,
    api_users=2_000,
    idle_users=3_000,
    idle_ticks=5,
    plan_due=1_000,
    deliver=500,
    deliver_100ms=200,
    burst=300,
    import_rows=2_000,
)


@dataclass
class Context:
    profile: Profile
    code: Code
    scope: Scope
    services: Services
    workdir: Path
    token: str = "bench-token"
