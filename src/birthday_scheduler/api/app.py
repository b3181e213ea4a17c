"""The FastAPI application, assembled from a ready ApiContext (no globals, no import-time I/O)."""

from __future__ import annotations

from typing import Any, cast

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from birthday_scheduler import __version__
from birthday_scheduler.api import health
from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.api.hot_paths import HotPaths
from birthday_scheduler.api.middleware import (
    BodyGuardMiddleware,
    ObservabilityMiddleware,
    RequestObserver,
)
from birthday_scheduler.api.openapi import openapi_document
from birthday_scheduler.api.problems import install_problem_handlers
from birthday_scheduler.api.security import Guard, RateLimiter, TokenAuth
from birthday_scheduler.console.router import PREFIX as CONSOLE
from birthday_scheduler.console.router import build_router as console_router
from birthday_scheduler.infra import migrate
from birthday_scheduler.users.routes import build_router as users_router

DESCRIPTION = """Sends every user a birthday message at 09:00 in their own time zone, exactly once.

Errors are `application/problem+json` (RFC 9457); validation errors list each field and why.
`/users*` needs `Authorization: Bearer <token>` when the service runs with API_TOKENS.
"""


class ServiceApp(FastAPI):
    """FastAPI behind the service's front door (`front`): the proxy headers resolved, then the
    hot paths answered, before FastAPI's own outer layers run for the rest."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None:
            await super().__call__(scope, receive, send)
        else:
            await self.front(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(context: ApiContext, *, hot_paths: bool = True) -> ServiceApp:
    """The API. `hot_paths=False` answers every request through FastAPI (api/hot_paths.py
    answers the hottest beside it, by the same rules: the tests compare the two)."""
    app = ServiceApp(
        title="birthday-scheduler",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
        # No OpenTelemetry here (metrics are Prometheus): skip its per-request provider checks.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.context = context
    install_problem_handlers(app)
    tokens = tuple(token.get_secret_value() for token in context.settings.api_tokens)
    guard = Guard(RateLimiter(context.settings.rate_limit_per_minute), TokenAuth(tokens))
    head = migrate.head_revision()  # once: the probes and the console compare with it
    # Routes are matched in order: the few probes first (load balancers poll /alive), then
    # the users API, then the console's many pages.
    app.include_router(health.build_router(head))
    app.include_router(users_router(context, [Depends(guard)]))
    app.include_router(console_router(context, head))  # /admin: signs in and guards itself
    app.add_middleware(
        BodyGuardMiddleware,
        max_body_bytes=context.settings.max_body_bytes,
        form_prefixes=(CONSOLE + "/",),
    )
    observer = RequestObserver()
    app.add_middleware(ObservabilityMiddleware, observer=observer)
    inner: ASGIApp = app.framework
    if hot_paths:
        inner = HotPaths(inner, context=context, guard=guard, observer=observer)
    # Outermost: everything inside (logs, the rate limit) sees the client, not the proxy. The
    # app does this itself (uvicorn's copy is off) so one validated setting decides, under any
    # server and in-process tests alike.
    front: Any = ProxyHeadersMiddleware(  # uvicorn types ASGI its own way
        cast(Any, inner), trusted_hosts=list(context.settings.forwarded_allow_ips)
    )
    app.front = front
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app
