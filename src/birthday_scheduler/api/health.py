"""Operations endpoints, never behind auth: liveness, readiness and per-component health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.infra import migrate
from birthday_scheduler.infra.broker.base import MAIN_QUEUE
from birthday_scheduler.infra.db import pool_status
from birthday_scheduler.infra.metrics import DB_POOL_CHECKED_OUT, DB_POOL_SIZE, QUEUE_DEPTH

CHECK_TIMEOUT_S = 2.0
BREAKER_NAMES = {0: "closed", 1: "half-open", 2: "open"}
_STARTED = time.monotonic()


@dataclass
class Component:
    status: str  # "up", "down" or "disabled"
    latency_ms: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.status != "down"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status}
        if self.latency_ms is not None:
            body["latencyMs"] = self.latency_ms
        return body | self.details


async def _timed(check: Callable[[], Awaitable[dict[str, Any] | None]]) -> Component:
    started = time.perf_counter()
    try:
        details = await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
    except Exception as exc:
        return Component("down", _ms(started), {"error": type(exc).__name__})
    return Component("up", _ms(started), details or {})


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def database(context: ApiContext) -> Component:
    async def check() -> dict[str, Any]:
        async with context.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        size, checked_out = pool_status(context.engine)
        return {"poolSize": size, "poolCheckedOut": checked_out}

    return await _timed(check)


async def schema(context: ApiContext, head: str) -> Component:
    """Up while the database is at `head`, the revision this code was shipped with: read from
    the migration files once at start-up, so a probe costs one query and no file reads."""

    async def check() -> dict[str, Any]:
        return {"revision": await migrate.database_revision(context.engine)}

    component = await _timed(check)
    if component.healthy and component.details["revision"] != head:
        component.status = "down"  # behind (or ahead of) this code: not ready
    if not component.healthy:
        component.details["expected"] = head
        component.details["hint"] = "run `birthday-scheduler db migrate`"
    return component


async def queue(context: ApiContext) -> Component:
    broker = context.broker
    if broker is None:
        return Component("disabled", details={"reason": "RABBITMQ_URL not set for this process"})

    async def check() -> dict[str, Any]:
        await broker.ping()
        depth = await broker.queue_depth(MAIN_QUEUE)
        QUEUE_DEPTH.labels(queue=MAIN_QUEUE).set(depth)
        return {"depth": depth}

    return await _timed(check)


def consumer(context: ApiContext) -> Component:
    if not context.runs_consumer or context.broker is None:
        return Component("disabled", details={"reason": "no worker in this process"})
    alive = context.broker.consumer_alive()
    return Component("up" if alive else "down", details={"alive": alive})


def circuit_breaker(context: ApiContext) -> Component:
    if context.breaker_state is None:
        return Component("disabled", details={"reason": "no worker in this process"})
    state = BREAKER_NAMES[context.breaker_state()]
    # An open breaker is the message service's trouble, not ours: degraded, still serving.
    return Component("up", details={"state": state})


async def scheduler(context: ApiContext) -> Component:
    if context.scheduler_last_tick is None:
        return Component("disabled", details={"reason": "no scheduler heartbeat source"})
    try:
        last = await asyncio.wait_for(context.scheduler_last_tick(), CHECK_TIMEOUT_S)
    except Exception as exc:
        # The heartbeat lives in the database: an unreachable or unmigrated one makes this
        # component down, never the health endpoint itself fail with a 500.
        return Component("down", details={"error": type(exc).__name__})
    if last is None:
        return Component("down", details={"lastTickAt": None})
    age = (context.clock.now() - last).total_seconds()
    stale_after = max(60.0, context.settings.scheduler_interval_ms / 1000 * 10)
    return Component(
        "up" if age <= stale_after else "down",
        details={"lastTickAt": last.isoformat(), "ageSeconds": round(age, 3)},
    )


def _json(body: dict[str, Any], healthy: bool) -> JSONResponse:
    return JSONResponse(body, status_code=200 if healthy else 503)


def build_router(head: str | None = None) -> APIRouter:
    """`head` is the schema revision this code ships with, read from the migration files once
    per app (here when not given): the files do not change under a running process."""
    router = APIRouter(tags=["operations"])
    if head is None:
        head = migrate.head_revision()

    # These answer 503 (same body shape) while a component is down: documented for clients.
    _DOWN: dict[int | str, dict[str, Any]] = {503: {"description": "a component is down"}}

    def ctx(request: Request) -> ApiContext:
        context: ApiContext = request.app.state.context
        return context

    @router.get("/alive")
    async def alive() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/health")
    async def health(request: Request) -> JSONResponse:
        db = await database(ctx(request))
        body = {
            "status": "ok" if db.healthy else "degraded",
            "uptimeSeconds": round(time.monotonic() - _STARTED, 1),
            "database": db.status,
        }
        return _json(body, True)

    @router.get("/health/db", responses=_DOWN)
    async def health_db(request: Request) -> JSONResponse:
        db = await database(ctx(request))
        return _json(db.body(), db.healthy)

    @router.get("/health/queue", responses=_DOWN)
    async def health_queue(request: Request) -> JSONResponse:
        context = ctx(request)
        q, c = await queue(context), consumer(context)
        body = {**q.body(), "consumer": c.body()}
        body["status"] = "up" if q.healthy and c.healthy else "down"
        return _json(body, q.healthy and c.healthy)

    @router.get("/health/detailed", responses=_DOWN)
    async def health_detailed(request: Request) -> JSONResponse:
        context = ctx(request)
        db, sch, q, tick = await asyncio.gather(
            database(context), schema(context, head), queue(context), scheduler(context)
        )
        components = {
            "database": db,
            "schema": sch,
            "queue": q,
            "consumer": consumer(context),
            "circuitBreaker": circuit_breaker(context),
            "scheduler": tick,
        }
        healthy = all(c.healthy for c in components.values())
        body = {
            "status": "ok" if healthy else "degraded",
            "components": {name: c.body() for name, c in components.items()},
        }
        return _json(body, healthy)

    @router.get("/ready", responses=_DOWN)
    async def ready(request: Request) -> JSONResponse:
        context = ctx(request)
        db, sch, q = await asyncio.gather(database(context), schema(context, head), queue(context))
        c = consumer(context)
        checks = {"database": db, "schema": sch, "queue": q, "consumer": c}
        healthy = all(x.healthy for x in checks.values())
        body = {
            "status": "ready" if healthy else "not ready",
            "checks": {k: v.status for k, v in checks.items()},
        }
        return _json(body, healthy)

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        size, checked_out = pool_status(ctx(request).engine)
        DB_POOL_SIZE.set(size)
        DB_POOL_CHECKED_OUT.set(checked_out)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
