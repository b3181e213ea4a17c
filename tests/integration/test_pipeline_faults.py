"""The delivery pipeline when things break: a service outage behind the circuit breaker, the
broker going away mid-run, and a worker finishing an attempt before the publisher has marked
the row queued. Real PostgreSQL and RabbitMQ (a throwaway vhost for this module)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from birthday_scheduler.delivery.breaker import CircuitState
from birthday_scheduler.infra.broker.rabbitmq import RabbitBroker
from birthday_scheduler.infra.db import create_engine, session_factory, unit_of_work
from birthday_scheduler.messages.ledger import claims, planned, publishing
from birthday_scheduler.messages.models import MessageLog, MessageStatus
from birthday_scheduler.settings import Settings
from birthday_scheduler.simulator.app import SimulatorConfig
from pipeline_support import (
    Pipeline,
    TcpProxy,
    assert_each_sent_once,
    configure,
    ledger,
    open_pipeline,
    pipeline_settings,
    seed_due,
    statuses,
    wait_for_statuses,
)
from rabbit_vhost import (
    RABBIT_HOST,
    RABBIT_PASSWORD,
    RABBIT_PORT,
    RABBIT_USER,
    close_all_connections,
    create_vhost,
    delete_vhost,
    vhost_url,
)
from support import eventually

CLOSED, HALF_OPEN, OPEN = CircuitState.CLOSED, CircuitState.HALF_OPEN, CircuitState.OPEN


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    name = create_vhost("pipeline-faults")
    yield name
    delete_vhost(name)


def rabbit(url: str, *, reconnect_s: float = 2.0, timeout_s: float = 10.0) -> RabbitBroker:
    suffix = uuid.uuid4().hex[:8]
    return RabbitBroker(
        url,
        main_queue=f"main_{suffix}",
        dead_letter_queue=f"dlq_{suffix}",
        watchdog_interval=0.3,
        reconnect_interval=reconnect_s,
        operation_timeout=timeout_s,
    )


async def sent_count(pipeline: Pipeline) -> int:
    return (await statuses(pipeline.sessions))["sent"]


# --- the message service down for longer than the breaker's reset timeout --------------------


@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_an_outage_opens_the_breaker_and_no_attempt_is_spent_while_it_is_open(
    pg_database_url: str, vhost: str
) -> None:
    settings = pipeline_settings(
        pg_database_url,
        vhost_url(vhost),
        worker_concurrency=10,
        circuit_breaker_failure_threshold=5,
        circuit_breaker_reset_timeout_ms=300,
        message_visibility_timeout_s=60,
    )
    async with open_pipeline(settings, rabbit(vhost_url(vhost)), SimulatorConfig()) as pipeline:
        seeded = await pipeline.seed(200)
        await eventually(lambda: _at_least(pipeline, 30), within=20)

        await configure(pipeline.simulator, outages=[[0, 1e9]])
        # Longer than the reset timeout: the breaker opens, lets a probe through, and the
        # failed probe opens it again (at least twice over).
        await eventually(lambda: _reopened(pipeline, times=2), within=20)
        calls_while_open = pipeline.calls() - pipeline.calls_at_transitions[0]
        half_opens = pipeline.transitions.count((OPEN, HALF_OPEN))
        assert pipeline.breaker.state in (OPEN, HALF_OPEN)
        await configure(pipeline.simulator, outages=[])

        rows = await wait_for_statuses(
            pipeline.sessions, [s.message_id for s in seeded], "sent", within=40
        )
        stats = await pipeline.stats()
        deliveries = await pipeline.deliveries()
        transitions = list(pipeline.transitions)

    assert_each_sent_once(seeded, deliveries)
    # Every attempt counted in the ledger is a call the service received: none was spent
    # (and counted) while the breaker held the messages back.
    assert sum(row.attempts for row in rows.values()) == stats["requests"]
    # Once it opened, only the deliveries already past the breaker (at most concurrency - 1
    # besides the one that opened it) and one probe per half-open reached the service: not
    # 170 messages times their retries.
    assert half_opens >= 2
    assert calls_while_open <= settings.worker_concurrency - 1 + half_opens
    # closed -> open -> (half-open -> open)* -> half-open -> closed, and nothing after.
    assert transitions[0] == (CLOSED, OPEN)
    assert transitions[-1] == (HALF_OPEN, CLOSED)
    assert (HALF_OPEN, OPEN) in transitions
    assert all(b[0] == a[1] for a, b in itertools.pairwise(transitions))
    assert pipeline.breaker.state is CLOSED


async def _at_least(pipeline: Pipeline, sent: int) -> bool:
    return await sent_count(pipeline) >= sent


async def _reopened(pipeline: Pipeline, times: int) -> bool:
    return pipeline.transitions.count((HALF_OPEN, OPEN)) >= times


# --- the broker going away while messages flow -----------------------------------------------


@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_publishing_and_consuming_resume_after_the_broker_goes_away(
    pg_database_url: str, vhost: str
) -> None:
    proxy = TcpProxy(RABBIT_HOST, RABBIT_PORT)
    await proxy.start()
    url = f"amqp://{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:{proxy.port}/{quote(vhost, safe='')}"
    settings = pipeline_settings(
        pg_database_url, url, worker_concurrency=10, message_visibility_timeout_s=60
    )
    broker = rabbit(url, reconnect_s=0.5, timeout_s=3.0)
    faults = SimulatorConfig(latency_ms=20, failure_rate_500=0.1, seed=99)
    try:
        async with open_pipeline(
            settings, broker, faults, publish_grace=timedelta(seconds=2)
        ) as pipeline:
            first = await pipeline.seed(300)
            await eventually(lambda: _at_least(pipeline, 50), within=20)

            # The broker vanishes: every connection dropped, new ones refused for a while,
            # and messages come due (and must be published) while it is gone.
            await proxy.cut()
            second = await pipeline.seed(200)
            await eventually(lambda: _not_consuming(broker), within=5)
            await eventually(lambda: _ledger_has(pipeline, 500), within=10)
            await proxy.start()
            await eventually(lambda: _consuming(broker), within=20)

            # And once more from the broker's side: it closes our connection itself.
            await eventually(lambda: _at_least(pipeline, 350), within=30)
            await asyncio.to_thread(close_all_connections, vhost)
            third = await pipeline.seed(100)

            seeded = first + second + third
            await wait_for_statuses(
                pipeline.sessions, [s.message_id for s in seeded], "sent", within=45
            )
            deliveries = await pipeline.deliveries()
            assert broker.consumer_alive()
    finally:
        await proxy.close()
    assert_each_sent_once(seeded, deliveries)


async def _consuming(broker: RabbitBroker) -> bool:
    return broker.consumer_alive()


async def _not_consuming(broker: RabbitBroker) -> bool:
    return not broker.consumer_alive()


async def _ledger_has(pipeline: Pipeline, rows: int) -> bool:
    return len(await ledger(pipeline.sessions)) >= rows


# --- an outcome recorded between the publish and the publisher's bookkeeping -----------------


@pytest.mark.postgres
async def test_a_retry_recorded_before_the_publisher_marks_the_row_queued_is_kept(
    database_url: str,
) -> None:
    """The worker can claim, send and record a failure before the scheduler, whose publish
    was just confirmed, marks the row `queued`. The row must stay `failed` with its retry
    time; flipped to `queued` it would wait a whole visibility timeout for a message that no
    queue holds."""
    engine = create_engine(Settings(), database_url)
    sessions = session_factory(engine)
    try:
        tick = datetime.now(UTC).replace(microsecond=123456)
        (seeded,) = await seed_due(sessions, 1, now=tick - timedelta(seconds=1))
        row = planned.NewLedgerRow(
            id=seeded.message_id,
            user_id=seeded.user_id,
            kind="birthday",
            occasion_date=tick.date(),
            status=MessageStatus.PENDING,
            scheduled_at=tick - timedelta(seconds=1),
            lease_until=tick + timedelta(seconds=30),
        )
        async with unit_of_work(sessions) as session:
            await planned.insert_ledger_rows(session, [row], tick)
        # ... published; a worker takes it at once and the service answers 500 ...
        worker_now = tick + timedelta(milliseconds=40)
        retry_at = worker_now + timedelta(seconds=2)
        async with unit_of_work(sessions) as session:
            claimed = await claims.claim_for_sending(
                session, row.id, worker_now, timedelta(seconds=60), tick - timedelta(hours=1)
            )
            assert claimed is not None
        async with unit_of_work(sessions) as session:
            assert await claims.record_outcome(
                session,
                row.id,
                claimed.attempts,
                MessageStatus.FAILED,
                worker_now,
                error="http 500",
                retry_at=retry_at,
            )
        # ... and only now does the scheduler's bookkeeping for that publish run.
        async with unit_of_work(sessions) as session:
            await publishing.mark_queued(session, [row.id], tick, timedelta(seconds=300))
        async with sessions() as session:
            stored = await session.get(MessageLog, row.id)
            assert stored is not None
            assert (stored.status, stored.lease_until) == ("failed", retry_at)

        # The sweep finds it when the retry is due, not five minutes later.
        async with unit_of_work(sessions) as session:
            stale = await publishing.lock_stale(session, retry_at, 100)
        assert [(r.id, r.status) for r in stale] == [(row.id, "failed")]
        # A row the worker has not touched is still marked queued as before.
        (untouched,) = await seed_due(sessions, 1, now=tick - timedelta(seconds=1))
        async with unit_of_work(sessions) as session:
            await planned.insert_ledger_rows(
                session,
                [
                    planned.NewLedgerRow(
                        id=untouched.message_id,
                        user_id=untouched.user_id,
                        kind="birthday",
                        occasion_date=tick.date(),
                        status=MessageStatus.PENDING,
                        scheduled_at=tick - timedelta(seconds=1),
                        lease_until=tick + timedelta(seconds=30),
                    )
                ],
                tick,
            )
            await publishing.mark_queued(
                session, [untouched.message_id], tick, timedelta(seconds=300)
            )
        async with sessions() as session:
            fresh = await session.get(MessageLog, untouched.message_id)
            assert fresh is not None
            assert (fresh.status, fresh.lease_until) == ("queued", tick + timedelta(seconds=300))
    finally:
        await engine.dispose()
