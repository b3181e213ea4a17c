"""The console's counts (messages/ledger/stats.py) on PostgreSQL and SQLite: hourly buckets
from a whole hour, edges included at the start and excluded at the end, each outcome counted
at the instant it names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages.ledger import stats
from birthday_scheduler.messages.models import MessageLog
from console_support import add_user, ledger_row, plan

START = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)


async def test_due_per_hour_buckets_the_planning_table(resources: runtime.Resources) -> None:
    sessions = resources.sessions
    fires = [
        START - timedelta(seconds=1),  # before the window
        START,  # the first instant of hour 0
        START + timedelta(minutes=59, seconds=59, microseconds=999_999),
        START + timedelta(hours=1),  # hour 1, not 0
        START + timedelta(hours=5, minutes=30),
        START + timedelta(hours=5, minutes=31),
        START + timedelta(hours=47, minutes=59),  # the last hour
        START + timedelta(hours=48),  # past the window
    ]
    for fire in fires:
        await plan(sessions, await add_user(sessions, START), fire)
    async with sessions() as session:
        counts = await stats.due_per_hour(session, START, 48)
    expected = [0] * 48
    expected[0], expected[1], expected[5], expected[47] = 2, 1, 2, 1
    assert counts == expected


async def test_outcomes_count_each_row_at_the_instant_it_names(
    resources: runtime.Resources,
) -> None:
    sessions = resources.sessions

    async def row(status: str, at: datetime) -> None:
        await ledger_row(sessions, await add_user(sessions, START), status, at)

    await row("sent", START + timedelta(minutes=10))
    await row("sent", START + timedelta(hours=2, minutes=1))
    await row("sent", START - timedelta(minutes=1))  # before the window
    await row("failed", START + timedelta(hours=2))  # waiting for a retry: `retried`
    await row("dead", START + timedelta(hours=3, minutes=59))
    await row("skipped", START + timedelta(hours=47, minutes=1))
    await row("skipped", START + timedelta(hours=48))  # past the window
    for status in ("pending", "queued", "sending", "cancelled"):
        await row(status, START + timedelta(hours=1))  # not an outcome
    async with sessions() as session:
        series = await stats.outcomes_per_hour(session, START, 48)
    assert set(series) == set(stats.OUTCOMES)
    nonzero = {name: {i: n for i, n in enumerate(c) if n} for name, c in series.items()}
    assert nonzero == {"sent": {0: 1, 2: 1}, "retried": {2: 1}, "dead": {3: 1}, "skipped": {47: 1}}


async def test_a_sent_row_counts_at_its_sent_at(resources: runtime.Resources) -> None:
    """sent_at, not updated_at: a row touched later (a sweep, a purge check) stays where it went."""
    sessions = resources.sessions
    user = await add_user(sessions, START)
    row_id = await ledger_row(sessions, user, "sent", START + timedelta(hours=1))
    async with unit_of_work(sessions) as session:
        await session.execute(
            update(MessageLog)
            .where(MessageLog.id == row_id)
            .values(updated_at=START + timedelta(hours=6))
        )
    async with sessions() as session:
        series = await stats.outcomes_per_hour(session, START, 48)
    assert [i for i, n in enumerate(series["sent"]) if n] == [1]


async def test_statuses_scheduled_in_a_day(resources: runtime.Resources) -> None:
    sessions = resources.sessions
    day = START.replace(hour=0)
    for status, at in [
        ("sent", day + timedelta(hours=2)),  # scheduled an hour earlier: in the day
        ("sent", day + timedelta(hours=9)),
        ("dead", day + timedelta(hours=23, minutes=30)),
        ("failed", day + timedelta(minutes=30)),  # scheduled the day before
        ("queued", day + timedelta(days=1, hours=1)),  # scheduled at the next midnight
    ]:
        await ledger_row(sessions, await add_user(sessions, START), status, at)
    async with sessions() as session:
        counts = await stats.statuses_scheduled_between(session, day, day + timedelta(days=1))
    assert counts == {"sent": 2, "dead": 1}
