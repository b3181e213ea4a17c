"""The delivery pipeline end to end: scheduler -> queue -> worker -> message service -> ledger.

Real PostgreSQL and RabbitMQ (a throwaway vhost for this module) or the embedded pair
(SQLite + the in-process queue), the simulator on loopback, the system clock, and settings in
milliseconds. Each test seeds users whose birthday message is already due and polls the
ledger until the pipeline has finished with them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict

import pytest

from birthday_scheduler.clock import SystemClock
from birthday_scheduler.delivery import dlq
from birthday_scheduler.infra.broker.base import DEAD_LETTER_QUEUE, Broker
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.broker.rabbitmq import RabbitBroker
from birthday_scheduler.simulator.app import SimulatorConfig
from pipeline_support import (
    Pipeline,
    assert_each_sent_once,
    ledger,
    open_pipeline,
    pipeline_settings,
    set_email,
    wait_for_statuses,
)
from rabbit_vhost import create_vhost, delete_vhost, vhost_url
from support import eventually

SCRIPT = str(Path(sys.executable).parent / "birthday-scheduler")
BLANK_EMAIL_REASON = "http 400: missing field: email"


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    name = create_vhost("pipeline-test")
    yield name
    delete_vhost(name)


class Queues(TypedDict):
    main_queue: str
    dead_letter_queue: str


def unique_queues() -> Queues:
    suffix = uuid.uuid4().hex[:8]
    return {"main_queue": f"main_{suffix}", "dead_letter_queue": f"dlq_{suffix}"}


def rabbit(vhost: str, queues: Queues | None = None) -> RabbitBroker:
    """A broker on this module's vhost; its queue names are the test's own unless given."""
    return RabbitBroker(vhost_url(vhost), watchdog_interval=0.5, **(queues or unique_queues()))


async def replay(
    pipeline: Pipeline, message_id: uuid.UUID, broker: Broker | None = None
) -> dlq.ReplayReport:
    """What `birthday-scheduler dlq replay --id` runs."""
    return await dlq.replay(
        pipeline.sessions,
        broker or pipeline.broker,
        [message_id],
        SystemClock(),
        pipeline.resources.lease,
    )


# --- many messages through an unreliable service ---------------------------------------------


@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_a_thousand_messages_through_500s_and_hangs_are_each_sent_exactly_once(
    pg_database_url: str, vhost: str
) -> None:
    settings = pipeline_settings(pg_database_url, vhost_url(vhost), message_service_timeout_ms=300)
    faults = SimulatorConfig(failure_rate_500=0.3, hang_rate=0.05, seed=20260615, hang_s=5)
    # The breaker keeps its default threshold (5): with a third of the calls failing it opens
    # now and then, holds everything back for its reset time, and the run still completes.
    async with open_pipeline(settings, rabbit(vhost), faults) as pipeline:
        seeded = await pipeline.seed(1000)
        rows = await wait_for_statuses(
            pipeline.sessions, [s.message_id for s in seeded], "sent", within=60
        )
        stats = await pipeline.stats()
        deliveries = await pipeline.deliveries()

    assert len(rows) == 1000
    assert_each_sent_once(seeded, deliveries)
    assert stats["accepted"] == 1000
    # The faults really happened, and every one of them cost an attempt that was retried.
    assert stats["failures"]["http500"] > 200
    assert stats["failures"]["hang"] > 20
    # Every call the service saw was a counted attempt (test_pipeline_faults shows the
    # converse, attempts == calls, where no time-out can cut a call short).
    attempts = sum(row.attempts for row in rows.values())
    assert attempts >= stats["requests"]
    assert attempts >= 1000 + stats["failures"]["http500"] + stats["failures"]["hang"]
    assert max(row.attempts for row in rows.values()) <= settings.max_delivery_attempts
    assert all(row.idempotency_key == str(row.id) for row in rows.values())


@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_a_send_accepted_but_never_answered_is_retried_with_the_same_key(
    pg_database_url: str, vhost: str
) -> None:
    settings = pipeline_settings(pg_database_url, vhost_url(vhost), message_service_timeout_ms=300)
    faults = SimulatorConfig(failure_rate_500=0.1, accept_then_hang_rate=0.15, seed=4242, hang_s=5)
    async with open_pipeline(settings, rabbit(vhost), faults) as pipeline:
        seeded = await pipeline.seed(300)
        rows = await wait_for_statuses(
            pipeline.sessions, [s.message_id for s in seeded], "sent", within=45
        )
        stats = await pipeline.stats()
        deliveries = await pipeline.deliveries()

    # The service recorded those sends and never answered; our client timed out and retried
    # with the same Idempotency-Key, which the service recognised as a repeat. A key's last
    # attempt is answered, so each unanswered one is followed by at least one such repeat.
    assert stats["failures"]["acceptThenHang"] > 10
    assert stats["duplicates"] >= stats["failures"]["acceptThenHang"]
    assert stats["accepted"] == 300
    assert_each_sent_once(seeded, deliveries)
    assert sum(row.attempts for row in rows.values()) >= 300 + stats["duplicates"]


# --- a permanent failure: dead at once, then replayed ----------------------------------------


async def _dead_after_one_attempt(pipeline: Pipeline) -> uuid.UUID:
    """A user whose stored address is blank: the service answers 400 (a real one)."""
    (broken,) = await pipeline.seed(1, email="")
    rows = await wait_for_statuses(pipeline.sessions, [broken.message_id], "dead", within=20)
    row = rows[broken.message_id]
    assert row.attempts == 1
    assert row.last_error == BLANK_EMAIL_REASON
    letters = await pipeline.broker.dead_letters(100)
    assert [(d.message_id, d.reason) for d in letters] == [(broken.message_id, BLANK_EMAIL_REASON)]
    stats = await pipeline.stats()
    assert (stats["requests"], stats["invalid"], stats["accepted"]) == (1, 1, 0)
    return broken.user_id


async def _wait_sent_once(pipeline: Pipeline, message_id: uuid.UUID) -> None:
    rows = await wait_for_statuses(pipeline.sessions, [message_id], "sent", within=20)
    assert rows[message_id].attempts == 1
    keys = [d["idempotencyKey"] for d in await pipeline.deliveries()]
    assert keys.count(str(message_id)) == 1
    assert await pipeline.broker.dead_letters(100) == []


@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_a_400_is_dead_after_one_attempt_and_a_replay_sends_it_once(
    pg_database_url: str, vhost: str
) -> None:
    settings = pipeline_settings(pg_database_url, vhost_url(vhost))
    async with open_pipeline(settings, rabbit(vhost), SimulatorConfig()) as pipeline:
        user_id = await _dead_after_one_attempt(pipeline)
        (message_id,) = [d.message_id for d in await pipeline.broker.dead_letters(10)]

        # Replaying before the cause is fixed fails the same way, one attempt again.
        report = await replay(pipeline, message_id)
        assert report.replayed == [message_id]
        await eventually(lambda: _requests_reach(pipeline, 2), within=20)
        await wait_for_statuses(pipeline.sessions, [message_id], "dead", within=20)
        assert [d.message_id for d in await pipeline.broker.dead_letters(10)] == [message_id]

        await set_email(pipeline.sessions, user_id, "fixed@example.com")
        report = await replay(pipeline, message_id)
        assert (report.replayed, report.not_dead, report.missing) == ([message_id], [], [])
        await _wait_sent_once(pipeline, message_id)

        # A second replay of the same id finds nothing left to do.
        again = await replay(pipeline, message_id)
        assert (again.replayed, again.missing) == ([], [message_id])
        assert (await pipeline.stats())["accepted"] == 1


async def _requests_reach(pipeline: Pipeline, count: int) -> bool:
    return bool((await pipeline.stats())["requests"] >= count)


class LateConfirmBroker(RabbitBroker):
    """A real RabbitMQ broker whose publish confirms arrive late (as they do under load):
    publish() returns only once `arrived()` says so."""

    def __init__(self, url: str, arrived: Callable[[], Awaitable[bool]], **options: Any) -> None:
        super().__init__(url, **options)
        self._arrived = arrived

    async def publish(self, message_ids: Sequence[uuid.UUID]) -> None:
        await super().publish(message_ids)
        await eventually(self._arrived, within=20)


@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_a_replayed_message_that_fails_before_its_publish_is_confirmed_keeps_its_copy(
    pg_database_url: str, vhost: str
) -> None:
    settings = pipeline_settings(pg_database_url, vhost_url(vhost))
    queues = unique_queues()
    async with open_pipeline(settings, rabbit(vhost, queues), SimulatorConfig()) as pipeline:
        await _dead_after_one_attempt(pipeline)
        (message_id,) = [d.message_id for d in await pipeline.broker.dead_letters(10)]

        async def failed_again() -> bool:
            refused_twice = (await pipeline.stats())["invalid"] >= 2
            return refused_twice and (await ledger(pipeline.sessions))[message_id].status == "dead"

        # The replay publishes on its own connection, to the same queues; the worker takes
        # the message, the service refuses it again and the worker dead-letters it, all
        # before the replay hears its publish was confirmed.
        replayer = LateConfirmBroker(vhost_url(vhost), failed_again, **queues)
        await replayer.start()
        try:
            report = await replay(pipeline, message_id, replayer)
        finally:
            await replayer.close()

        assert report.replayed == [message_id]
        assert (await ledger(pipeline.sessions))[message_id].status == "dead"
        # A dead row always has its copy in the DLQ, or it can never be replayed again.
        letters = await pipeline.broker.dead_letters(10)
        assert [(d.message_id, d.reason) for d in letters] == [(message_id, BLANK_EMAIL_REASON)]


@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_the_dlq_replay_command_resends_a_fixed_message_once(
    pg_database_url: str, vhost: str
) -> None:
    # The CLI talks to the default queue names, so this test (alone in the module) uses them.
    settings = pipeline_settings(pg_database_url, vhost_url(vhost))
    broker = RabbitBroker(vhost_url(vhost), watchdog_interval=0.5)
    async with open_pipeline(settings, broker, SimulatorConfig()) as pipeline:
        user_id = await _dead_after_one_attempt(pipeline)
        (message_id,) = [d.message_id for d in await pipeline.broker.dead_letters(10)]
        await set_email(pipeline.sessions, user_id, "fixed@example.com")

        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "RABBITMQ_"))},
            "DATABASE_URL": pg_database_url,
            "RABBITMQ_URL": vhost_url(vhost),
        }
        process = await asyncio.create_subprocess_exec(
            SCRIPT,
            "dlq",
            "replay",
            "--id",
            str(message_id),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, stderr.decode()[-2000:]
        report = [json.loads(line) for line in stdout.decode().splitlines() if "replayed" in line]
        assert report == [{"replayed": [str(message_id)], "notDead": [], "missing": []}]
        await _wait_sent_once(pipeline, message_id)
        # The dead-letter queue itself is empty too, not just the copy this broker sees.
        assert await pipeline.broker.queue_depth(DEAD_LETTER_QUEUE) == 0


# --- the embedded mode: SQLite and the in-process queue --------------------------------------


def memory_broker() -> Broker:
    return MemoryBroker(requeue_base_delay=0.05)


async def test_embedded_mode_sends_two_hundred_messages_through_failures_exactly_once(
    sqlite_database_url: str,
) -> None:
    settings = pipeline_settings(
        sqlite_database_url, message_service_timeout_ms=300, worker_concurrency=10
    )
    faults = SimulatorConfig(
        failure_rate_500=0.25,
        failure_rate_502=0.05,
        hang_rate=0.03,
        accept_then_hang_rate=0.05,
        seed=7,
        hang_s=5,
    )
    async with open_pipeline(settings, memory_broker(), faults) as pipeline:
        seeded = await pipeline.seed(200)
        rows = await wait_for_statuses(
            pipeline.sessions, [s.message_id for s in seeded], "sent", within=50
        )
        stats = await pipeline.stats()
        deliveries = await pipeline.deliveries()

    assert_each_sent_once(seeded, deliveries)
    assert stats["accepted"] == 200
    assert stats["failures"]["http500"] > 0
    assert stats["failures"]["acceptThenHang"] > 0
    assert sum(row.attempts for row in rows.values()) > 200


async def test_embedded_mode_dead_letters_a_400_and_replays_it_once(
    sqlite_database_url: str,
) -> None:
    settings = pipeline_settings(sqlite_database_url, worker_concurrency=10)
    async with open_pipeline(settings, memory_broker(), SimulatorConfig()) as pipeline:
        user_id = await _dead_after_one_attempt(pipeline)
        (message_id,) = [d.message_id for d in await pipeline.broker.dead_letters(10)]
        await set_email(pipeline.sessions, user_id, "fixed@example.com")
        report = await replay(pipeline, message_id)
        assert report.replayed == [message_id]
        await _wait_sent_once(pipeline, message_id)
