"""The small HTTP server worker and scheduler processes expose on METRICS_PORT."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from birthday_scheduler.api import health
from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.api.middleware import ObservabilityMiddleware
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.settings import Settings

DEFAULT_METRICS_PORT = 9100


def create_ops_app(context: ApiContext) -> FastAPI:
    app = FastAPI(title="birthday-scheduler operations", docs_url=None, redoc_url=None)
    app.state.context = context
    app.include_router(health.build_router())
    app.add_middleware(ObservabilityMiddleware)
    return app


async def serve_ops(context: ApiContext, settings: Settings, stop: asyncio.Event) -> None:
    port = settings.metrics_port if settings.metrics_port is not None else DEFAULT_METRICS_PORT
    await runtime.serve_http(
        create_ops_app(context), settings.host, port, stop, settings.shutdown_grace_s
    )
