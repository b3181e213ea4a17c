"""The three hottest requests answered beside the framework: GET /alive (load balancers poll
it), GET /users/{id} and POST /users.

Under load these spent most of their CPU in FastAPI's routing, dependency solving and request
objects (py-spy, `make bench`), not in their own work. Here each is matched by a string compare
and answered by the code its FastAPI route calls (users/routes.py), with the same guard (rate
limit, then token), the same problem+json, metrics, X-Request-ID and access log line.

What the framework decides stays with it: a request whose body is not plain JSON within
MAX_BODY_BYTES, fails UserWrite's validation, or whose id is not a canonical UUID goes on to
the full stack below, its body replayed, before the guard has taken anything from the rate
limit. So there is one set of rules, and the OpenAPI document describes every route.
`create_app(hot_paths=False)` answers everything through the framework; the tests compare the
two.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.api.json import dumps
from birthday_scheduler.api.middleware import RequestObserver, read_body, replay, request_id
from birthday_scheduler.api.problems import problem_response, unexpected_problem
from birthday_scheduler.api.security import Guard
from birthday_scheduler.errors import ProblemError
from birthday_scheduler.users.routes import create_user_document, read_user_document
from birthday_scheduler.users.schemas import UserWrite

_ALIVE = b'{"status":"alive"}'
_HEX = "[0-9a-fA-F]"
_USER = re.compile(rf"/users/{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}")
_ID_AT = len("/users/")


class HotPaths:
    def __init__(
        self, app: ASGIApp, *, context: ApiContext, guard: Guard, observer: RequestObserver
    ) -> None:
        self.app = app
        self.context = context
        self.guard = guard
        self.observer = observer
        self.max_body_bytes = context.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "GET":
                if path == "/alive":
                    await self._alive(scope, send)
                    return
                if _USER.fullmatch(path):
                    user_id = uuid.UUID(path[_ID_AT:])
                    await self._answer(
                        scope, send, _headers(scope), "/users/{user_id}", 200,
                        lambda: read_user_document(self.context, user_id),
                    )  # fmt: skip
                    return
            elif method == "POST" and path == "/users":
                await self._create(scope, receive, send, _headers(scope))
                return
        await self.app(scope, receive, send)

    async def _alive(self, scope: Scope, send: Send) -> None:
        started = time.perf_counter()
        rid = _headers(scope).get(b"x-request-id", b"")
        await _send_json(send, 200, _ALIVE, request_id(rid))
        self.observer.record(scope, "/alive", 200, time.perf_counter() - started)

    async def _create(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        declared = headers.get(b"content-length", b"")
        if not (
            headers.get(b"content-type") == b"application/json"
            and declared.isdigit()
            and int(declared) <= self.max_body_bytes
        ):
            await self.app(scope, receive, send)  # the body guard answers 413 or 415
            return
        body = await read_body(receive, self.max_body_bytes)
        if body is None:
            return  # the client went away
        user = _valid_user(body) if len(body) <= self.max_body_bytes else None
        if user is None:  # the framework answers, with each field and why (or 413)
            await self.app(scope, replay(body, receive), send)
            return
        await self._answer(
            scope, send, headers, "/users", 201, lambda: create_user_document(self.context, user)
        )

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        headers: dict[bytes, bytes],
        route: str,
        status: int,
        work: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        """Guard, run `work`, answer its document as JSON with `status`, or its problem."""
        started = time.perf_counter()
        rid = request_id(headers.get(b"x-request-id", b""))
        answered = 500
        tokens = structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            try:
                client = scope.get("client")
                self.guard.check(
                    client[0] if client else "unknown",
                    headers.get(b"authorization", b"").decode("latin-1"),
                )
                body = dumps(await work())
            except ProblemError as problem:
                answered = problem.status
                await _send_problem(scope, send, problem, rid)
                return
            except Exception as exc:
                unexpected = unexpected_problem(exc, scope["path"])
                answered = unexpected.status
                await _send_problem(scope, send, unexpected, rid)
                raise  # as the framework does: the server logs the traceback
            answered = status
            await _send_json(send, status, body, rid)
        finally:
            try:
                self.observer.record(scope, route, answered, time.perf_counter() - started)
            finally:
                structlog.contextvars.reset_contextvars(**tokens)


def _valid_user(body: bytes) -> UserWrite | None:
    try:
        return UserWrite.model_validate_json(body)
    except ValidationError:
        return None


_READ = frozenset({b"authorization", b"content-length", b"content-type", b"x-request-id"})


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request headers this module reads, in one pass: the last of each, as the body guard
    and the request id read theirs, but the first Authorization, as Starlette's Request does."""
    found: dict[bytes, bytes] = {}
    for key, value in scope["headers"]:
        if key in _READ and not (key == b"authorization" and key in found):
            found[key] = bytes(value)
    return found


async def _send_json(send: Send, status: int, body: bytes, rid: str) -> None:
    # The headers Starlette's Response writes, in its order, then the request id.
    headers = [
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
        (b"x-request-id", rid.encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_problem(scope: Scope, send: Send, problem: ProblemError, rid: str) -> None:
    response = problem_response(problem, scope["path"])
    response.raw_headers.append((b"x-request-id", rid.encode()))
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
