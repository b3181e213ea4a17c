"""One-shot operations commands: migrations, dead letters, retention."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

from birthday_scheduler.delivery import dlq
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.errors import ConfigurationError
from birthday_scheduler.infra import migrate
from birthday_scheduler.infra.broker.base import Broker
from birthday_scheduler.infra.db import create_engine, unit_of_work
from birthday_scheduler.infra.logging import get_logger
from birthday_scheduler.messages.ledger import occasions
from birthday_scheduler.settings import Settings

log = get_logger(__name__)
PURGE_BATCH = 10_000


def _print(value: object) -> None:
    from birthday_scheduler.cli import print_json

    print_json(value)


async def db_migrate(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        before = await migrate.current_revision(engine)
        await migrate.upgrade(engine)
        status = await migrate.schema_status(engine)
        log.info("db.migrated", from_revision=before, to_revision=status.current)
    finally:
        await engine.dispose()


async def db_rollback(settings: Settings, target: str) -> None:
    engine = create_engine(settings)
    try:
        before = await migrate.current_revision(engine)
        await migrate.downgrade(engine, target)
        after = await migrate.current_revision(engine)
        log.info("db.rolled_back", from_revision=before, to_revision=after)
    finally:
        await engine.dispose()


async def db_status(settings: Settings) -> bool:
    engine = create_engine(settings)
    try:
        status = await migrate.schema_status(engine)
    finally:
        await engine.dispose()
    _print({"current": status.current, "head": status.head, "upToDate": status.up_to_date})
    return status.up_to_date


def _broker(settings: Settings) -> Broker:
    broker = runtime.build_broker(settings, embedded_allowed=False)
    if broker is None:
        raise ConfigurationError(
            "RABBITMQ_URL: required for dlq commands (the in-process queue lives inside `all`)"
        )
    return broker


async def dlq_list(settings: Settings, limit: int) -> None:
    async with runtime.open_resources(settings, broker=_broker(settings)) as resources:
        for letter in await dlq.peek(resources.require_broker(), limit):
            _print(
                {
                    "id": str(letter.message_id),
                    "reason": letter.reason,
                    "deadAt": letter.dead_at.isoformat(),
                }
            )


async def dlq_replay(settings: Settings, ids: Sequence[uuid.UUID] | None) -> None:
    """`dlq replay --id …` prints one report; `--all` prints one per page of the DLQ (at least
    one), so neither holds more than a page of dead letters whatever the depth."""
    async with runtime.open_resources(settings, broker=_broker(settings)) as resources:
        sessions, broker = resources.sessions, resources.require_broker()
        if ids is not None:
            _print_report(await dlq.replay(sessions, broker, ids, resources.clock, resources.lease))
            return
        printed = 0

        def on_page(report: dlq.ReplayReport) -> None:
            nonlocal printed
            printed += 1
            _print_report(report)

        await dlq.replay_all(sessions, broker, resources.clock, resources.lease, on_page)
        if not printed:
            _print_report(dlq.ReplayReport(replayed=[], not_dead=[], missing=[]))


def _print_report(report: dlq.ReplayReport) -> None:
    _print(
        {
            "replayed": [str(i) for i in report.replayed],
            "notDead": [str(i) for i in report.not_dead],
            "missing": [str(i) for i in report.missing],
        }
    )


async def dlq_purge(settings: Settings) -> None:
    async with runtime.open_resources(settings, broker=_broker(settings)) as resources:
        purged = await resources.require_broker().purge_dead_letters()
    _print({"purged": purged})


async def messages_purge(settings: Settings, age: timedelta) -> None:
    async with runtime.open_resources(settings, broker=None) as resources:
        cutoff = resources.clock.now() - age
        total = 0
        while True:
            async with unit_of_work(resources.sessions) as session:
                deleted = await occasions.purge_finished(session, cutoff, PURGE_BATCH)
            total += deleted
            if deleted < PURGE_BATCH:
                break
    log.info("messages.purged", deleted=total, older_than=cutoff.isoformat())
    _print({"deleted": total, "olderThan": cutoff.isoformat()})
