"""Prometheus metrics, module-level, with bounded labels only (never a user id or email)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CIRCUIT_BREAKER_STATE = Gauge(
    "circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["name"]
)
MESSAGES_PROCESSED = Counter(
    "messages_processed_total",
    "Messages finished or retried, by outcome (sent, retried, dead, skipped, cancelled).",
    ["outcome"],
)
MESSAGES_ISOLATED = Counter(
    "messages_isolated_total",
    "Messages that could not be planned or sent at all (unknown time zone, unknown kind, "
    "attempts spent by crashes), dead-lettered with their reason so the rest go on; by stage.",
    ["stage"],
)
MESSAGES_PLANNED = Counter("messages_planned_total", "Ledger rows created by the scheduler.")
QUEUE_DEPTH = Gauge("queue_depth", "Messages ready in a queue.", ["queue"])
DB_POOL_SIZE = Gauge("db_pool_size", "Connections the database pool may hold.")
DB_POOL_CHECKED_OUT = Gauge("db_pool_checked_out", "Database connections in use.")
SCHEDULER_LAST_TICK = Gauge(
    "scheduler_last_tick_timestamp_seconds", "Unix time of the scheduler's last finished tick."
)
SCHEDULER_TICK_DURATION = Histogram(
    "scheduler_tick_duration_seconds",
    "Time one scheduler tick takes.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0),
)
DELIVERY_DURATION = Histogram(
    "message_delivery_duration_seconds",
    "Time one call to the message service takes.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

OUTCOMES = ("sent", "retried", "dead", "skipped", "cancelled")
for _outcome in OUTCOMES:  # export every series from the start so rate() has a baseline
    MESSAGES_PROCESSED.labels(outcome=_outcome)
for _stage in ("planning", "delivery"):
    MESSAGES_ISOLATED.labels(stage=_stage)
