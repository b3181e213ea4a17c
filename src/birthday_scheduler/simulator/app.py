"""A simulator of the external message service, faithful enough to exercise every failure path.

Endpoints:

    POST /send  (also POST /)   {"email": ..., "message": ...} with an optional Idempotency-Key
        200 {"status": "sent", "sentTime": "<ISO UTC>"}; 400 JSON on a non-JSON body or a
        missing/blank field; injected faults: 500 JSON, 502 HTML, 429 with Retry-After: 1,
        503 during outage windows, hangs, and accept-then-hang (recorded, never answered).
        A repeated Idempotency-Key that was accepted before gets 200 again without a second
        delivery (counted in `duplicates`), as real idempotent APIs do.
    GET /deliveries     the most recent accepted deliveries, oldest first, once per key:
                        [{email, message, idempotencyKey, time, authorized}]; at most
                        `max_deliveries` (SIMULATOR_MAX_DELIVERIES, default 10,000) are kept,
                        and the header X-Total-Accepted counts every one accepted since the
                        start or the last reset (as /stats `accepted` does). A key is
                        recognised as a repeat while its delivery is still kept.
    DELETE /deliveries  forget deliveries, keys and counters (for tests)
    GET /stats          {requests, authorized, accepted, duplicates, invalid, failures: {...},
                        deliveries (kept now), maxDeliveries}
    GET /config         the current settings plus `uptimeS`
    PUT /config         change settings at run time with a JSON subset of the SimulatorConfig
                        field names, e.g. {"outages": [[0, 1e9]]} to start an outage now and
                        {"outages": []} to end it; {"seed": 7} also re-seeds the generator
    GET /health         200

Whether a request carried a bearer token is recorded (`authorized`); the token never is.
Settings come from SIMULATOR_* variables, see `birthday_scheduler.simulator.config`.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from birthday_scheduler.clock import Clock, SystemClock
from birthday_scheduler.simulator.config import Fault, SimulatorConfig

log = structlog.get_logger(__name__)

_BAD_GATEWAY_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


@dataclass(frozen=True)
class Delivery:
    email: str
    message: str
    idempotency_key: str | None
    time: datetime
    authorized: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "message": self.message,
            "idempotencyKey": self.idempotency_key,
            "time": _iso(self.time),
            "authorized": self.authorized,
        }


@dataclass
class SimulatorState:
    config: SimulatorConfig
    clock: Clock
    rng: random.Random = field(init=False)
    started_at: float = field(init=False)
    # A ring of the most recent accepted deliveries; by_key indexes the ones it still holds.
    deliveries: deque[Delivery] = field(init=False)
    by_key: dict[str, Delivery] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    # Set on shutdown so hung requests end at once instead of holding the server open.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)  # noqa: S311 - fault injection, not crypto
        self.started_at = self.clock.monotonic()
        self.deliveries = deque(maxlen=self.config.max_deliveries)

    def reconfigure(self, config: SimulatorConfig, reseed: bool) -> None:
        self.config = config
        if reseed:
            self.rng = random.Random(config.seed)  # noqa: S311 - fault injection, not crypto
        if config.max_deliveries != self.deliveries.maxlen:
            kept = list(self.deliveries)[-config.max_deliveries :]
            self.deliveries = deque(kept, maxlen=config.max_deliveries)
            self.by_key = {d.idempotency_key: d for d in kept if d.idempotency_key is not None}

    def record(self, delivery: Delivery) -> None:
        """Keep an accepted delivery, dropping the oldest (and forgetting its key) when full."""
        if len(self.deliveries) == self.deliveries.maxlen:
            oldest = self.deliveries[0]
            if oldest.idempotency_key is not None:
                self.by_key.pop(oldest.idempotency_key, None)
        self.deliveries.append(delivery)
        if delivery.idempotency_key is not None:
            self.by_key[delivery.idempotency_key] = delivery
        self.counters["accepted"] += 1

    def reset(self) -> None:
        self.deliveries.clear()
        self.by_key.clear()
        self.counters.clear()
        self.failures.clear()

    def uptime_s(self) -> float:
        return self.clock.monotonic() - self.started_at

    def draw_latency_s(self) -> float:
        low, high = self.config.latency_ms, self.config.latency_max_ms
        millis = low if high is None or high == low else self.rng.uniform(low, high)
        return millis / 1000.0

    async def pause(self, seconds: float) -> bool:
        """Sleep, cut short by shutdown. True if the server is stopping."""
        try:
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        except TimeoutError:
            return False
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.counters["requests"],
            "authorized": self.counters["authorized"],
            "accepted": self.counters["accepted"],
            "duplicates": self.counters["duplicates"],
            "invalid": self.counters["invalid"],
            "failures": {fault.value: self.failures[fault.value] for fault in _FAULT_KINDS},
            "deliveries": len(self.deliveries),
            "maxDeliveries": self.deliveries.maxlen,
        }


_FAULT_KINDS = (
    Fault.HTTP_500,
    Fault.HTTP_502,
    Fault.HTTP_429,
    Fault.HANG,
    Fault.ACCEPT_THEN_HANG,
)
_OUTAGE = "outage503"

STATE = web.AppKey("simulator_state", SimulatorState)


def create_simulator_app(config: SimulatorConfig, clock: Clock | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[STATE] = SimulatorState(config=config, clock=clock or SystemClock())
    app.router.add_post("/send", _send)
    app.router.add_post("/", _send)
    app.router.add_get("/deliveries", _list_deliveries)
    app.router.add_delete("/deliveries", _reset)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/config", _get_config)
    app.router.add_put("/config", _put_config)
    app.router.add_get("/health", _health)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_startup(app: web.Application) -> None:
    state = app[STATE]
    state.started_at = state.clock.monotonic()


async def _on_shutdown(app: web.Application) -> None:
    app[STATE].stopping.set()


async def _send(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.counters["requests"] += 1
    authorized = request.headers.get("Authorization", "").startswith("Bearer ")
    if authorized:
        state.counters["authorized"] += 1
    # Draw on every request, whatever happens next, so a seed fixes the whole sequence.
    fault = state.config.pick_fault(state.rng.random())
    latency_s = state.draw_latency_s()
    if latency_s > 0 and await state.pause(latency_s):
        return _error(503, "shutting down")

    if state.config.in_outage(state.uptime_s()):
        state.failures[_OUTAGE] += 1
        return _error(503, "service unavailable")
    if fault is Fault.HTTP_500:
        state.failures[fault.value] += 1
        return _error(500, "internal server error")
    if fault is Fault.HTTP_502:
        state.failures[fault.value] += 1
        return web.Response(status=502, text=_BAD_GATEWAY_PAGE, content_type="text/html")
    if fault is Fault.HTTP_429:
        state.failures[fault.value] += 1
        return _error(429, "too many requests", headers={"Retry-After": "1"})
    if fault is Fault.HANG:
        state.failures[fault.value] += 1
        await state.pause(state.config.hang_s)
        return _error(503, "request abandoned")

    fields_or_error = await _read_send_body(request)
    if isinstance(fields_or_error, web.Response):
        state.counters["invalid"] += 1
        return fields_or_error
    email, message = fields_or_error
    key = request.headers.get("Idempotency-Key", "").strip() or None
    delivery = state.by_key.get(key) if key is not None else None
    if delivery is not None:
        state.counters["duplicates"] += 1
    else:
        delivery = Delivery(email, message, key, state.clock.now(), authorized)
        state.record(delivery)

    if fault is Fault.ACCEPT_THEN_HANG:
        state.failures[fault.value] += 1
        await state.pause(state.config.hang_s)
    return web.json_response({"status": "sent", "sentTime": _iso(delivery.time)})


async def _read_send_body(request: web.Request) -> tuple[str, str] | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body must be a JSON object")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    values: list[str] = []
    for name in ("email", "message"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            return _error(400, f"missing field: {name}")
        values.append(value)
    return values[0], values[1]


async def _list_deliveries(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        [delivery.to_json() for delivery in state.deliveries],
        headers={
            "X-Total-Accepted": str(state.counters["accepted"]),
            "X-Max-Deliveries": str(state.deliveries.maxlen),
        },
    )


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.Response(status=204)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats())


async def _get_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({**state.config.to_json(), "uptimeS": state.uptime_s()})


async def _put_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        changes = await request.json()
    except ValueError:
        return _error(400, "body must be a JSON object")
    if not isinstance(changes, dict):
        return _error(400, "body must be a JSON object")
    try:
        config = state.config.updated(changes)
    except (TypeError, ValueError) as exc:
        return _error(400, str(exc))
    state.reconfigure(config, reseed="seed" in changes)
    log.info("simulator.reconfigured", fields=sorted(changes))
    return web.json_response({**config.to_json(), "uptimeS": state.uptime_s()})


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _error(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": text}, status=status, headers=headers)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class RunningSimulator:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """What MESSAGE_SERVICE_URL should be set to."""
        return f"{self.base_url}/send"

    @property
    def state(self) -> SimulatorState:
        return self.runner.app[STATE]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    config: SimulatorConfig | None = None,
    clock: Clock | None = None,
) -> RunningSimulator:
    """Serve the simulator in this event loop; port 0 picks a free port (see `.port`)."""
    app = create_simulator_app(config or SimulatorConfig(), clock)
    # handler_cancellation: a client that times out and disconnects frees its hung handler.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    return RunningSimulator(runner=runner, host=host, port=bound_port)


async def run_simulator(host: str, port: int, config: SimulatorConfig, stop: asyncio.Event) -> None:
    """Serve until `stop` is set (the `birthday-scheduler message-service` command)."""
    simulator = await start_simulator(host, port, config)
    log.info("simulator.started", host=host, port=simulator.port, seed=config.seed)
    try:
        await stop.wait()
    finally:
        await simulator.close()
        log.info("simulator.stopped")


__all__ = [
    "Delivery",
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorState",
    "create_simulator_app",
    "run_simulator",
    "start_simulator",
]
