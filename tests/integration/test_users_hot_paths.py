"""The users API's hot paths on real PostgreSQL, counted on the wire: POST /users and
GET /users/{id} are one statement each (no BEGIN/COMMIT around them, no pre-ping), and a
connection from before a restart never reaches a client as an error.

The app talks to PostgreSQL through a proxy that reads the client side of the protocol and
counts the statements the server is asked to run: each Execute of an extended-protocol
statement, and each simple Query (how asyncpg sends BEGIN, COMMIT, ROLLBACK and a ping).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy.engine import make_url

from birthday_scheduler.settings import Settings
from support import api_client, pg_admin, user_body

_STARTUP_CODES = {80877103, 80877104, 80877102}  # SSL, GSS encryption, cancel requests


@dataclass
class StatementCounter:
    """Statements the clients sent, in order: ("execute", "") or ("query", its text)."""

    seen: list[tuple[str, str]] = field(default_factory=list)

    def take(self) -> list[tuple[str, str]]:
        taken, self.seen = self.seen, []
        return taken

    def parse(self, buffer: bytearray, started: list[bool]) -> None:
        while True:
            if not started[0]:
                if len(buffer) < 8:
                    return
                length, code = struct.unpack("!ii", buffer[:8])
                if len(buffer) < length:
                    return
                del buffer[:length]
                started[0] = code not in _STARTUP_CODES
                continue
            if len(buffer) < 5:
                return
            kind = chr(buffer[0])
            (length,) = struct.unpack("!i", buffer[1:5])
            if len(buffer) < 1 + length:
                return
            payload = bytes(buffer[5 : 1 + length])
            del buffer[: 1 + length]
            if kind == "E":
                self.seen.append(("execute", ""))
            elif kind == "Q":
                self.seen.append(("query", payload.rstrip(b"\0").decode().strip()))


@contextlib.asynccontextmanager
async def counting_proxy(host: str, port: int, counter: StatementCounter) -> AsyncIterator[int]:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
        buffer = bytearray()
        started = [False]
        try:
            while chunk := await reader.read(65536):
                if count:
                    buffer += chunk
                    counter.parse(buffer, started)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    tasks: set[asyncio.Task[None]] = set()

    async def accept(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, port)
        for task in (
            asyncio.create_task(pipe(client_r, server_w, count=True)),
            asyncio.create_task(pipe(server_r, client_w, count=False)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@dataclass
class Api:
    http: httpx.AsyncClient
    statements: StatementCounter
    database: str


@pytest.fixture
async def api(pg_database_url: str) -> AsyncIterator[Api]:
    url = make_url(pg_database_url)
    counter = StatementCounter()
    async with counting_proxy(url.host or "127.0.0.1", url.port or 5432, counter) as port:
        proxied = url.set(port=port).render_as_string(hide_password=False)
        settings = Settings(database_url=proxied, rate_limit_per_minute=0, database_pool_max=3)
        async with api_client(settings) as http:
            yield Api(http, counter, url.database or "")


async def _kill_every_connection(database: str) -> None:
    """What a PostgreSQL restart does to the pool: every backend is terminated."""
    await pg_admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )


async def test_post_and_get_are_one_statement_each_without_a_transaction_or_ping(
    api: Api,
) -> None:
    # A connection's first use of a statement also looks up its parameter types.
    warm = await api.http.post("/users", json=user_body(anniversaryDate="2015-03-02"))
    await api.http.get(f"/users/{warm.json()['id']}")
    for _ in range(3):
        api.statements.take()
        created = await api.http.post("/users", json=user_body(anniversaryDate="2015-03-02"))
        assert created.status_code == 201, created.text
        assert api.statements.take() == [("execute", "")]

        got = await api.http.get(f"/users/{created.json()['id']}")
        assert got.status_code == 200, got.text
        assert api.statements.take() == [("execute", "")]
        # What the create answered from the values it wrote is what the read returns.
        assert got.json() == created.json()
        # Earliest first: the clock is at 2026-06-15, the birthday 07-01, the anniversary 03-02.
        assert [m["kind"] for m in got.json()["nextMessages"]] == ["birthday", "anniversary"]


async def test_list_is_one_statement(api: Api) -> None:
    for _ in range(3):
        assert (await api.http.post("/users", json=user_body())).status_code == 201
    api.statements.take()
    page = await api.http.get("/users", params={"limit": 2})
    assert page.status_code == 200
    assert api.statements.take() == [("execute", "")]
    rest = await api.http.get("/users", params={"limit": 2, "cursor": page.json()["nextCursor"]})
    assert rest.status_code == 200
    assert api.statements.take() == [("execute", "")]
    assert len(page.json()["data"]) + len(rest.json()["data"]) == 3


async def test_connections_killed_by_a_restart_are_replaced_without_an_error(api: Api) -> None:
    user_id = (await api.http.post("/users", json=user_body())).json()["id"]
    for _ in range(3):
        # Open every pooled connection, so each request after the kill meets a dead one.
        await asyncio.gather(*(api.http.get(f"/users/{user_id}") for _ in range(6)))
        await _kill_every_connection(api.database)
        responses = await asyncio.gather(
            *(api.http.get(f"/users/{user_id}") for _ in range(3)),
            api.http.post("/users", json=user_body()),
            api.http.get("/users"),
        )
        assert [r.status_code for r in responses] == [200, 200, 200, 201, 200], [
            r.text for r in responses
        ]
    # Recovered without pings: no statement but the requests' own (no BEGIN, ";", ROLLBACK).
    api.statements.take()
    assert (await api.http.get(f"/users/{user_id}")).status_code == 200
    assert api.statements.take() == [("execute", "")]
