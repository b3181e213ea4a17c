"""Every process runs on uvloop, the loop the publish throughput was measured on."""

from __future__ import annotations

import asyncio

import uvloop

from birthday_scheduler.infra import eventloop


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_run_uses_uvloop_and_returns_the_result() -> None:
    loop = eventloop.run(_running_loop())

    assert isinstance(loop, uvloop.Loop)
    assert loop.is_closed()  # the loop is the run's own, closed afterwards
