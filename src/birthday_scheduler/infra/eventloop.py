"""The event loop every process runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows, where uvloop does not exist
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop where there is one: about a third more RabbitMQ publishes per second
    of CPU than asyncio's own loop (measured with the former bench/broker_publish.py), once the
    scheduler's bottleneck in a big wave. Elsewhere the standard loop, only slower."""
    if uvloop is None:
        return asyncio.run(main)
    return uvloop.run(main)
