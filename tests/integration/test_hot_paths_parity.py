"""The hot paths (api/hot_paths.py) answer exactly as the framework does.

Two apps over two copies of the same PostgreSQL database, one answering GET /alive,
GET /users/{id} and POST /users beside FastAPI and one answering everything through it, get the
same requests in the same order: each answer must match (status, problem+json body, the headers
a client reads), with only a created user's id differing. Hypothesis draws the request bodies,
valid and not (wrong types, unknown fields, bad dates and zones, broken JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from birthday_scheduler.api.app import create_app
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.settings import Settings
from support import FakeClock, drop_database, pg_admin, pg_url, user_body

TOKEN = "parity-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
# Headers whose value a client may act on; x-request-id is compared for presence.
COMPARED_HEADERS = ("content-type", "www-authenticate", "retry-after")

Answer = tuple[int, dict[str, str], Any]


class Pair:
    """The hot app and the framework-only app, each over its own database, one event loop."""

    def __init__(self, runner: asyncio.Runner, clients: tuple[httpx.AsyncClient, ...]) -> None:
        self.runner = runner
        self.hot, self.plain = clients

    def both(self, method: str, path: str, **kwargs: Any) -> tuple[Answer, Answer]:
        async def send(client: httpx.AsyncClient) -> Answer:
            response = await client.request(method, path, **kwargs)
            assert "x-request-id" in response.headers
            headers = {k: response.headers[k] for k in COMPARED_HEADERS if k in response.headers}
            try:
                body = response.json()
            except ValueError:
                body = response.text
            return response.status_code, headers, body

        hot = self.runner.run(send(self.hot))
        plain = self.runner.run(send(self.plain))
        return hot, plain

    def same(self, method: str, path: str, **kwargs: Any) -> Answer:
        hot, plain = self.both(method, path, **kwargs)
        if hot[0] == 201:  # each app made its own user: ids differ, nothing else
            assert isinstance(hot[2], dict)
            assert isinstance(plain[2], dict)
            assert hot[2].pop("id") != plain[2].pop("id")
        assert hot == plain
        return hot


@pytest.fixture(scope="module")
def pair(pg_template: str) -> Iterator[Pair]:
    names = [
        f"{pg_template}_hot_{uuid.uuid4().hex[:6]}",
        f"{pg_template}_fw_{uuid.uuid4().hex[:6]}",
    ]
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()

        async def open_pair() -> tuple[httpx.AsyncClient, ...]:
            clients = []
            for name, hot in zip(names, (True, False), strict=True):
                await pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
                stack.push_async_callback(drop_database, name)
                clients.append(await stack.enter_async_context(_client(pg_url(name), hot)))
            return tuple(clients)

        try:
            yield Pair(runner, runner.run(open_pair()))
        finally:
            runner.run(stack.aclose())


@contextlib.asynccontextmanager
async def _client(url: str, hot_paths: bool) -> AsyncIterator[httpx.AsyncClient]:
    settings_ = Settings(database_url=url, api_tokens=[TOKEN], rate_limit_per_minute=0)
    async with runtime.open_resources(settings_, broker=MemoryBroker(), clock=FakeClock()) as res:
        app = create_app(runtime.api_context(res), hot_paths=hot_paths)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def _junk() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**40), 2**40),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=4),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    )


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "firstName": st.sampled_from(["Ada", "", " ", "Ç" * 3, "A" * 101]),
    "lastName": st.sampled_from(["Lovelace", "", "L" * 101]),
    "email": st.sampled_from(
        ["USER-1@Example.COM", "not-an-email", "a@b", "a..b@example.com", " x@y.io", "x@localhost"]
    ),
    "dateOfBirth": st.sampled_from(
        ["1990-07-01", "2000-02-29", "1990-02-29", "2999-01-01", "1990-7-1", "1990-07-01T00:00"]
    ),
    "timezone": st.sampled_from(["Europe/Paris", "UTC", "utc", "Mars/Olympus", "Etc/GMT+5", ""]),
    "timezoneOffset": st.sampled_from([0, 60, -720, 840, 841, "60", 1.5, 60.0, True]),
    "anniversaryDate": st.sampled_from(["2015-06-20", "2999-06-20", "20-06-2015"]),
    "sendLocalTime": st.sampled_from(["09:00", "9:00", "25:00", "18:30:00"]),
    "notifications": st.sampled_from([{"birthday": False}, {"nope": True}, {"birthday": "yes"}]),
    "unknownField": st.just(1),
}


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A valid body (its email drawn from a few, so some are taken) with up to three fields
    set to other values (valid or not), removed or added, sometimes broken as JSON text."""
    body: dict[str, Any] = {
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": f"user-{draw(st.integers(0, 60))}@example.com",
        "dateOfBirth": "1990-07-01",
        **draw(st.sampled_from([{"timezone": "Europe/Paris"}, {"timezoneOffset": 60}])),
    }
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(FIELDS)))
        change = draw(st.sampled_from(["sample", "sample", "junk", "remove"]))
        if change == "remove":
            body.pop(name, None)
        else:
            body[name] = draw(FIELDS[name] if change == "sample" else _junk())
    text = json.dumps(body)
    shape = draw(st.sampled_from(["as is"] * 6 + ["duplicate key", "trailing", "list"]))
    if shape == "duplicate key":
        text = text[:-1] + ', "email": "other@example.com"}'
    elif shape == "trailing":
        text += " x"
    elif shape == "list":
        text = f"[{text}]"
    return text.encode()


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    derandomize=True,  # the same cases every run: a mismatch is a defect, not luck
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies())
def test_post_users_answers_as_the_framework_does(pair: Pair, body: bytes) -> None:
    pair.same("POST", "/users", content=body, headers={**AUTH, **JSON})


def test_hand_picked_requests_answer_as_the_framework_does(pair: Pair) -> None:
    hot, plain = pair.both("POST", "/users", json=user_body(email="kept@example.com"), headers=AUTH)
    assert hot[0] == plain[0] == 201
    again = pair.same("POST", "/users", json=user_body(email="KEPT@example.com"), headers=AUTH)
    assert again[0] == 409
    future = pair.same("POST", "/users", json=user_body(dateOfBirth="2999-01-01"), headers=AUTH)
    assert future[0] == 400

    # Ids: each app's own user is read back the same (ids aside), an unknown one is 404, and
    # what is not a canonical UUID is the framework's 400 either way.
    hot_user = pair.runner.run(pair.hot.get(f"/users/{hot[2]['id'].upper()}", headers=AUTH))
    plain_user = pair.runner.run(pair.plain.get(f"/users/{plain[2]['id']}", headers=AUTH))
    assert hot_user.status_code == plain_user.status_code == 200
    assert {**hot_user.json(), "id": None} == {**plain_user.json(), "id": None}
    assert hot_user.json()["email"] == "kept@example.com"
    for path in (f"/users/{uuid.uuid4()}", "/users/not-a-uuid", f"/users/{uuid.uuid4().hex}"):
        pair.same("GET", path, headers=AUTH)

    # The guard: no token, a wrong one, another scheme, the scheme in lower case.
    some_user = f"/users/{uuid.uuid4()}"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        assert pair.same("GET", some_user, headers=headers)[0] == 401
        assert pair.same("POST", "/users", json=user_body(), headers=headers)[0] == 401
    assert pair.same("GET", some_user, headers={"Authorization": f"bearer {TOKEN}"})[0] == 404

    # Bodies the body guard answers: not JSON, too large, no type at all.
    text = {**AUTH, "Content-Type": "text/plain"}
    assert pair.same("POST", "/users", content=b"{}", headers=text)[0] == 415
    huge = json.dumps(user_body(lastName="x" * 70_000)).encode()
    assert pair.same("POST", "/users", content=huge, headers={**AUTH, **JSON})[0] == 413
    assert pair.same("POST", "/users", content=b"", headers=AUTH)[0] == 415

    assert pair.same("GET", "/alive") == (
        200,
        {"content-type": "application/json"},
        {"status": "alive"},
    )


def test_rate_limit_and_request_ids_are_the_framework_s(pg_template: str) -> None:
    """A limit of 2 a minute: the third request is 429 with Retry-After on both paths, the
    caller's X-Request-ID is echoed, and failed validations count against the limit."""

    async def run(hot_paths: bool) -> list[tuple[int, str | None, str]]:
        name = f"{pg_template}_rl_{uuid.uuid4().hex[:6]}"
        await pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
        try:
            settings_ = Settings(database_url=pg_url(name), rate_limit_per_minute=2)
            broker, clock = MemoryBroker(), FakeClock()
            async with runtime.open_resources(settings_, broker=broker, clock=clock) as res:
                app = create_app(runtime.api_context(res), hot_paths=hot_paths)
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    answers = []
                    for n, body in enumerate(({"firstName": 1}, user_body(), user_body())):
                        response = await client.post(
                            "/users", json=body, headers={"X-Request-ID": f"trace-{n}"}
                        )
                        answers.append(
                            (
                                response.status_code,
                                response.headers.get("retry-after"),
                                response.headers["x-request-id"],
                            )
                        )
                    return answers
        finally:
            await drop_database(name)

    hot, plain = asyncio.run(run(True)), asyncio.run(run(False))
    assert hot == plain
    assert [status for status, _, _ in hot] == [400, 201, 429]
    assert hot[2][1] is not None
    assert [rid for _, _, rid in hot] == ["trace-0", "trace-1", "trace-2"]
