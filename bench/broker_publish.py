"""Publisher-confirm throughput: pipelined batches against one awaited confirm per message.

Runs against the local RabbitMQ (guest/guest on 127.0.0.1:5672) in a throwaway vhost that
it deletes afterwards:

    .venv/bin/python -m bench.broker_publish [count]
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

# Reuse the tests' vhost helpers without making tests/ a package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from birthday_scheduler.infra import eventloop
from birthday_scheduler.infra.broker.rabbitmq import RabbitBroker
from rabbit_vhost import create_vhost, delete_vhost, vhost_url


async def _rate(url: str, queue: str, count: int, *, pipelined: bool) -> float:
    broker = RabbitBroker(url, main_queue=queue, dead_letter_queue=f"{queue}_dlq")
    await broker.start()
    try:
        ids = [uuid.uuid4() for _ in range(count)]
        started = time.perf_counter()
        if pipelined:
            await broker.publish(ids)
        else:
            for message_id in ids:
                await broker.publish([message_id])
        elapsed = time.perf_counter() - started
        depth = await broker.queue_depth(queue)
        if depth != count:
            raise SystemExit(f"{queue}: expected {count} messages, found {depth}")
        return count / elapsed
    finally:
        await broker.close()


def main(count: int) -> None:
    vhost = create_vhost("bench")
    try:
        url = vhost_url(vhost)
        # The service's loop (uvloop), then the standard one for the pipelined publish.
        one_by_one = eventloop.run(_rate(url, "bench_one_by_one", count, pipelined=False))
        pipelined = eventloop.run(_rate(url, "bench_pipelined", count, pipelined=True))
        standard = asyncio.run(_rate(url, "bench_pipelined_asyncio", count, pipelined=True))
    finally:
        delete_vhost(vhost)
    print(f"messages:             {count}")
    print(f"one-by-one confirms:  {one_by_one:,.0f} msg/s")
    print(f"pipelined confirms:   {pipelined:,.0f} msg/s (batches of 500)")
    print(f"ratio:                {pipelined / one_by_one:.1f}x")
    print(f"pipelined, asyncio's own loop instead of uvloop: {standard:,.0f} msg/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
