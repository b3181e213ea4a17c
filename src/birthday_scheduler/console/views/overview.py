"""The overview: component health, queue depths, today's messages, and the two hourly charts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup

from birthday_scheduler.api import health
from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.console import charts
from birthday_scheduler.infra.broker.base import DEAD_LETTER_QUEUE
from birthday_scheduler.messages.ledger import stats

HOURS = 48


@dataclass(frozen=True)
class ComponentRow:
    name: str
    status: str  # up, down, disabled
    detail: str


@dataclass(frozen=True)
class Overview:
    generated_at: datetime
    components: list[ComponentRow]
    queue_depth: int | None
    dlq_depth: int | None
    today_total: int
    today_bar: Markup
    today_legend: Markup
    due_total: int
    due_chart: Markup
    outcome_totals: dict[str, int]
    outcomes_chart: Markup
    outcomes_legend: Markup


def _detail(component: health.Component) -> str:
    """The component's details as `key value` pairs (error types and numbers, never text a
    user wrote)."""
    shown = {k: v for k, v in component.details.items() if k != "hint"}
    if component.latency_ms is not None:
        shown["latencyMs"] = component.latency_ms
    return ", ".join(f"{key} {value}" for key, value in shown.items())


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def _dlq_depth(context: ApiContext) -> int | None:
    if context.broker is None:
        return None
    try:
        return await asyncio.wait_for(
            context.broker.queue_depth(DEAD_LETTER_QUEUE), health.CHECK_TIMEOUT_S
        )
    except Exception:
        return None  # shown as unknown; the queue component says why


async def build(context: ApiContext, schema_head: str) -> Overview:
    now = context.clock.now()
    db, schema, queue, tick, dlq_depth = await asyncio.gather(
        health.database(context),
        health.schema(context, schema_head),
        health.queue(context),
        health.scheduler(context),
        _dlq_depth(context),
    )
    components = {
        "database": db,
        "schema": schema,
        "queue": queue,
        "consumer": health.consumer(context),
        "circuit breaker": health.circuit_breaker(context),
        "scheduler": tick,
    }
    ahead = _hour(now)
    behind = ahead - timedelta(hours=HOURS - 1)  # the last bucket is the current hour
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    async with context.sessions() as session:
        due = await stats.due_per_hour(session, ahead, HOURS)
        outcomes = await stats.outcomes_per_hour(session, behind, HOURS)
        today = await stats.statuses_scheduled_between(session, day, day + timedelta(days=1))
    series = [charts.Series(name, outcomes[name]) for name in stats.OUTCOMES]
    return Overview(
        generated_at=now,
        components=[ComponentRow(n, c.status, _detail(c)) for n, c in components.items()],
        queue_depth=queue.details.get("depth") if queue.status == "up" else None,
        dlq_depth=dlq_depth,
        today_total=sum(today.values()),
        today_bar=charts.status_bar(today),
        today_legend=charts.legend(
            [f"{status}: {count}" for status, count in sorted(today.items())],
            [charts.status_colour(status) for status in sorted(today)],
        ),
        due_total=sum(due),
        due_chart=charts.stacked_bars(
            "Messages due per hour, next 48 h (UTC)", ahead, [charts.Series("due", due)]
        ),
        outcome_totals={name: sum(outcomes[name]) for name in stats.OUTCOMES},
        outcomes_chart=charts.stacked_bars("Outcomes per hour, past 48 h (UTC)", behind, series),
        outcomes_legend=charts.legend(stats.OUTCOMES),
    )
