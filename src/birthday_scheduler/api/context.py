"""What the API needs at run time, built once at start-up and handed to the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from birthday_scheduler.clock import Clock
from birthday_scheduler.infra.broker.base import Broker
from birthday_scheduler.settings import Settings
from birthday_scheduler.users.service import UsersService


@dataclass
class ApiContext:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    clock: Clock
    users: UsersService
    # None when this process has no queue (the api alone without RABBITMQ_URL).
    broker: Broker | None = None
    # True when this process runs a consumer whose liveness health must report.
    runs_consumer: bool = False
    breaker_state: Callable[[], int] | None = None
    scheduler_last_tick: Callable[[], Awaitable[datetime | None]] | None = None
