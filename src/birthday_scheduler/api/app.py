"""The FastAPI application, assembled from a ready ApiContext (no globals, no import-time I/O)."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from birthday_scheduler import __version__
from birthday_scheduler.api import health
from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.api.middleware import BodyGuardMiddleware, ObservabilityMiddleware
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


def create_app(context: ApiContext) -> FastAPI:
    app = FastAPI(
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
    app.add_middleware(ObservabilityMiddleware)
    # Outermost: everything inside (logs, the rate limit) sees the client, not the proxy. The
    # app does this itself (uvicorn's copy is off) so one validated setting decides, under any
    # server and in-process tests alike.
    app.add_middleware(
        ProxyHeadersMiddleware, trusted_hosts=list(context.settings.forwarded_allow_ips)
    )
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app
