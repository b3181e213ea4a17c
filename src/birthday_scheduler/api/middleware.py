"""ASGI middleware: request ids, access logs and metrics by route template, body guards."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import structlog
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from birthday_scheduler.api.problems import problem_response
from birthday_scheduler.errors import ProblemError
from birthday_scheduler.infra.logging import enabled_for, get_logger
from birthday_scheduler.infra.metrics import HTTP_DURATION, HTTP_REQUESTS

_LOG_NAME = "birthday_scheduler.http"
log = get_logger(_LOG_NAME)
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_QUIET_ROUTES = {"/metrics", "/alive", "/ready", "/health"}
# Bounds the series cache: methods, route templates and statuses are few.
_MAX_SERIES = 1_000


class RequestObserver:
    """Counts, times and logs finished requests: the runbook's metrics and one log line each.

    Shared by ObservabilityMiddleware and api/hot_paths.py. The route label is the template
    (`/users/{user_id}`), never the raw path, so labels stay bounded and carry no ids. It looks
    up metric series it has already resolved (prometheus' `labels()` takes a lock and builds a
    key on every call).
    """

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def record(self, scope: Scope, route: str, status: int, elapsed: float) -> None:
        method = scope["method"]
        self._count(method, route, status).inc()
        self._histogram(method, route).observe(elapsed)
        # Asked first: below info (LOG_LEVEL=warn) the line's fields are not even built.
        if (route not in _QUIET_ROUTES or status >= 500) and _info_enabled():
            client = scope.get("client")
            log.info(
                "http.request",
                method=method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                # The proxy headers middleware has put the client here, not the proxy.
                client=client[0] if client else None,
            )

    def _count(self, method: str, route: str, status: int) -> Any:
        key = (method, route, status)
        series = self._counters.get(key)
        if series is None:
            series = HTTP_REQUESTS.labels(method=method, route=route, status=str(status))
            if len(self._counters) < _MAX_SERIES:
                self._counters[key] = series
        return series

    def _histogram(self, method: str, route: str) -> Any:
        key = (method, route)
        series = self._histograms.get(key)
        if series is None:
            series = HTTP_DURATION.labels(method=method, route=route)
            if len(self._histograms) < _MAX_SERIES:
                self._histograms[key] = series
        return series


class ObservabilityMiddleware:
    """Binds a request id (echoed as X-Request-ID), then records the request when it ends."""

    def __init__(self, app: ASGIApp, observer: RequestObserver | None = None) -> None:
        self.app = app
        self.observer = observer or RequestObserver()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope["headers"])
        request_id_header = (b"x-request-id", request_id.encode())
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"].append(request_id_header)
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            try:
                elapsed = time.perf_counter() - started
                self.observer.record(scope, _route_template(scope), status, elapsed)
            finally:
                structlog.contextvars.reset_contextvars(**tokens)


def _info_enabled() -> bool:
    return enabled_for(_LOG_NAME, logging.INFO)


def _request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID (the last one sent) when it is short printable text, else a
    new one."""
    supplied = b""
    for name, value in headers:
        if name == b"x-request-id":
            supplied = value
    return request_id(supplied)


def request_id(supplied: bytes) -> str:
    """`supplied` (an X-Request-ID value, or b"") when it is short printable text, else a new id."""
    text = supplied.decode("latin-1")[:64]
    return text if text and text.isprintable() else _new_id()


def _new_id() -> str:
    # 128 random bits in UUID form, at a third of str(uuid4())'s cost (no UUID object).
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    # Plain Starlette routes (/docs, /openapi.json) do not record themselves in the scope.
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        template = getattr(candidate, "path", None)
        if template and candidate.matches(scope)[0] is Match.FULL:
            return str(template)
    return "unmatched"


class BodyGuardMiddleware:
    """413 for bodies over the limit (declared or streamed), 415 for bodies that are not JSON
    (or, under `form_prefixes`, not a urlencoded form either: the console's plain HTML forms)."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, form_prefixes: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.form_prefixes = form_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared: bytes | None = None
        raw_type = b""
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"content-type":
                raw_type = value
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._reject(scope, send, _too_large(self.max_body_bytes))
            return
        content_type = raw_type.decode("latin-1").split(";")[0].strip()
        is_form = content_type == "application/x-www-form-urlencoded" and str(
            scope.get("path", "")
        ).startswith(self.form_prefixes)
        if not (content_type == "application/json" or content_type.endswith("+json") or is_form):
            problem = ProblemError(
                415, "Unsupported Media Type", "Send the body as application/json."
            )
            await self._reject(scope, send, problem)
            return

        # Bodies are small (a user is well under a kilobyte): read it whole, then replay it.
        body = await read_body(receive, self.max_body_bytes)
        if body is None:
            return  # client went away
        if len(body) > self.max_body_bytes:
            await self._reject(scope, send, _too_large(self.max_body_bytes))
            return
        await self.app(scope, replay(body, receive), send)

    @staticmethod
    async def _reject(scope: Scope, send: Send, problem: ProblemError) -> None:
        response = problem_response(problem, scope.get("path"))
        await response(scope, _empty_receive, send)


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, "Content Too Large", f"The body must not exceed {limit} bytes.")


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, read until it ends or has passed `limit` bytes (so a body longer than
    `limit` means "too large"); None when the client went away."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False) or size > limit:
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then whatever the client sends next."""
    replayed = False

    async def replayed_receive() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed_receive


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
