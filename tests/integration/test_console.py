"""The console at /admin through the app, as a browser's requests reach it: refused without a
session (pages redirect, actions 401), CSRF-checked (403), signed in by a token into a cookie
with the right attributes, every page rendered and escaped, and its actions going through the
same code as the CLI (replay, purge) with the in-process queue and a real database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from birthday_scheduler.api.app import create_app
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.base import DEAD_LETTER_QUEUE, MAIN_QUEUE
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.messages.models import MessageLog
from birthday_scheduler.settings import Settings
from console_support import add_user, csrf_of, ledger_row, plan, sign_in
from support import FakeClock

TOKEN = "console-secret-token"
PAGES = ["/admin", "/admin/users", f"/admin/users/{uuid.uuid4()}", "/admin/dead-letters"]
ACTIONS = [
    "/admin/users/find",
    "/admin/dead-letters/replay",
    "/admin/dead-letters/purge",
    "/admin/signout",
]


class Console:
    def __init__(self, http: httpx.AsyncClient, resources: runtime.Resources, clock: FakeClock):
        self.http, self.resources, self.clock = http, resources, clock

    @property
    def broker(self) -> MemoryBroker:
        broker = self.resources.broker
        assert isinstance(broker, MemoryBroker)
        return broker


async def _console(
    settings: Settings, base_url: str = "http://testserver"
) -> AsyncIterator[Console]:
    clock = FakeClock()
    async with runtime.open_resources(settings, broker=MemoryBroker(), clock=clock) as resources:
        app = create_app(runtime.api_context(resources))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield Console(http, resources, clock)


def _settings(database_url: str, **extra: Any) -> Settings:
    values = {"database_url": database_url, "api_tokens": f"other,{TOKEN}"}
    values |= {"rate_limit_per_minute": 0} | extra
    return Settings.model_validate(values)


@pytest.fixture
async def console(database_url: str) -> AsyncIterator[Console]:
    async for opened in _console(_settings(database_url)):
        yield opened


@pytest.fixture
async def sqlite_console(sqlite_database_url: str) -> AsyncIterator[Console]:
    async for opened in _console(_settings(sqlite_database_url)):
        yield opened


@pytest.mark.parametrize("path", PAGES)
async def test_pages_redirect_to_sign_in_without_a_session(
    sqlite_console: Console, path: str
) -> None:
    response = await sqlite_console.http.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin/signin?next=")
    assert TOKEN not in response.text


@pytest.mark.parametrize("path", ACTIONS)
async def test_actions_are_refused_without_a_session(sqlite_console: Console, path: str) -> None:
    await sqlite_console.broker.publish_dead(uuid.uuid4(), "http 400", sqlite_console.clock.now())
    response = await sqlite_console.http.post(path, data={"confirm": "purge", "csrf": "x"})
    assert response.status_code == 401
    assert await sqlite_console.broker.queue_depth(DEAD_LETTER_QUEUE) == 1


async def test_the_live_fragment_is_refused_without_a_session(sqlite_console: Console) -> None:
    assert (await sqlite_console.http.get("/admin/overview/live")).status_code == 401


async def test_a_forged_or_expired_cookie_is_no_session(sqlite_console: Console) -> None:
    http = sqlite_console.http
    await sign_in(http, TOKEN)
    cookie = http.cookies.get("bs_console")
    assert cookie is not None
    version, expires, nonce, mac = cookie.split(".")
    http.cookies.set("bs_console", f"{version}.{int(expires) + 10}.{nonce}.{mac}", path="/admin")
    assert (await http.get("/admin")).status_code == 303
    http.cookies.set("bs_console", cookie, path="/admin")
    assert (await http.get("/admin")).status_code == 200
    sqlite_console.clock.advance(hours=8, seconds=1)
    assert (await http.get("/admin")).status_code == 303


@pytest.mark.parametrize("csrf", [None, "", "wrong", "another-session"])
async def test_actions_need_the_sessions_csrf_token(
    sqlite_console: Console, csrf: str | None
) -> None:
    http, broker = sqlite_console.http, sqlite_console.broker
    if csrf == "another-session":
        csrf = await sign_in(http, TOKEN)  # a token from a session that is then replaced
        http.cookies.clear()
    await sign_in(http, TOKEN)
    await broker.publish_dead(uuid.uuid4(), "http 400", sqlite_console.clock.now())
    form = {"confirm": "purge"} | ({"csrf": csrf} if csrf is not None else {})
    for path in ACTIONS:
        response = await http.post(path, data=form)
        assert response.status_code == 403, path
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 1
    assert (await http.get("/admin")).status_code == 200  # still signed in: sign-out refused too


async def test_a_wrong_token_signs_nobody_in(sqlite_console: Console) -> None:
    http = sqlite_console.http
    form = await http.get("/admin/signin")
    response = await http.post(
        "/admin/signin", data={"csrf": csrf_of(form), "next": "/admin", "token": "guess"}
    )
    assert response.status_code == 401
    assert "not valid" in response.text
    assert "bs_console=" not in response.headers.get("set-cookie", "")
    assert (await http.get("/admin")).status_code == 303


async def test_sign_in_needs_its_forms_csrf_value(sqlite_console: Console) -> None:
    """Another site cannot post a token of its own to sign the browser into its session."""
    response = await sqlite_console.http.post(
        "/admin/signin", data={"csrf": "made-up", "token": TOKEN}
    )
    assert response.status_code == 403
    assert "bs_console=" not in response.headers.get("set-cookie", "")


async def test_the_session_cookie_is_signed_httponly_strict_and_expires(
    sqlite_console: Console,
) -> None:
    http = sqlite_console.http
    form = await http.get("/admin/signin?next=/admin/dead-letters")
    response = await http.post(
        "/admin/signin",
        data={"csrf": csrf_of(form), "next": "/admin/dead-letters", "token": TOKEN},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/dead-letters"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("bs_console="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "max-age=28800" in cookie.lower()
    assert "secure" not in attributes  # plain http here
    assert TOKEN not in cookie


async def test_over_https_the_cookie_is_secure(sqlite_database_url: str) -> None:
    async for console in _console(_settings(sqlite_database_url), "https://testserver"):
        form = await console.http.get("/admin/signin")
        response = await console.http.post(
            "/admin/signin", data={"csrf": csrf_of(form), "token": TOKEN}
        )
        cookie = response.headers["set-cookie"]
        assert "; secure" in cookie.lower()


async def test_behind_a_trusted_tls_proxy_the_cookie_is_secure(sqlite_console: Console) -> None:
    """The request came over https to a proxy in FORWARDED_ALLOW_IPS (here 127.0.0.1)."""
    http = sqlite_console.http
    form = await http.get("/admin/signin")
    response = await http.post(
        "/admin/signin",
        data={"csrf": csrf_of(form), "token": TOKEN},
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
    )
    assert response.status_code == 303
    assert "; secure" in response.headers["set-cookie"].lower()


async def test_sign_in_is_rate_limited_per_client(sqlite_database_url: str) -> None:
    async for console in _console(_settings(sqlite_database_url, rate_limit_per_minute=3)):
        http = console.http
        form = await http.get("/admin/signin")  # the first of three
        for _ in range(2):
            form = await http.post("/admin/signin", data={"csrf": csrf_of(form), "token": "guess"})
            assert form.status_code == 401
        response = await http.post("/admin/signin", data={"csrf": csrf_of(form), "token": TOKEN})
        assert response.status_code == 429
        assert "retry-after" in response.headers


async def test_without_tokens_on_loopback_the_console_is_open(sqlite_database_url: str) -> None:
    settings = Settings(database_url=sqlite_database_url, rate_limit_per_minute=0)
    async for console in _console(settings):
        response = await console.http.get("/admin", follow_redirects=True)
        assert response.status_code == 200
        assert "<h1>Overview</h1>" in response.text
        assert 'name="token"' not in response.text
        # Still one session, so actions still need its CSRF token.
        bare = await console.http.post("/admin/dead-letters/purge", data={"confirm": "purge"})
        assert bare.status_code == 403


async def test_every_page_renders_signed_in(console: Console) -> None:
    http, sessions, now = console.http, console.resources.sessions, console.clock.now()
    csrf = await sign_in(http, TOKEN)
    user = await add_user(sessions, now, email="Grace.Hopper@Example.com", timezone="Asia/Tokyo")
    await plan(sessions, user, now + timedelta(hours=3))
    await ledger_row(
        sessions,
        user,
        "dead",
        now - timedelta(hours=2),
        attempts=8,
        last_error="http 400: missing field: email",
    )
    await console.broker.publish_dead(uuid.uuid4(), "http 400: missing field", now)

    overview = await http.get("/admin")
    assert overview.status_code == 200
    assert overview.text.count('<svg class="chart"') == 2
    for header in ("content-security-policy", "x-frame-options"):
        assert header in overview.headers
    assert overview.headers["cache-control"] == "no-store"
    live = await http.get("/admin/overview/live")
    assert live.status_code == 200
    assert "<html" not in live.text
    assert 'id="dlq-depth">1<' in live.text

    assert (await http.get("/admin/users")).status_code == 200
    found = await http.post(
        "/admin/users/find", data={"csrf": csrf, "query": "grace.hopper@EXAMPLE.com"}
    )
    assert found.status_code == 303
    assert found.headers["location"] == f"/admin/users/{user}"
    page = await http.get(found.headers["location"])
    assert page.status_code == 200
    assert "Grace.Hopper@Example.com" in page.text
    # 12:00 UTC + 3 h is 15:00 UTC, which is midnight in Tokyo (UTC+9).
    local = (now + timedelta(hours=3)).strftime("%Y-%m-%d")
    assert f'id="next-utc">{local} 15:00 UTC<' in page.text
    assert "00:00 Asia/Tokyo" in page.text
    assert "http 400: missing field: email" in page.text
    assert '<td class="attempts">8</td>' in page.text

    by_id = await http.post("/admin/users/find", data={"csrf": csrf, "query": str(user)})
    assert by_id.headers["location"] == f"/admin/users/{user}"
    missing = await http.post("/admin/users/find", data={"csrf": csrf, "query": "no@one.example"})
    assert missing.status_code == 404
    assert 'id="not-found"' in missing.text
    assert (await http.get(f"/admin/users/{uuid.uuid4()}")).status_code == 404

    letters = await http.get("/admin/dead-letters")
    assert letters.status_code == 200
    assert "http 400: missing field" in letters.text
    for asset in ("console.css", "console.js", "favicon.svg"):
        assert (await http.get(f"/admin/static/{asset}")).status_code == 200
    assert (await http.get("/admin/static/../router.py")).status_code == 404


async def test_no_email_reaches_the_logs(sqlite_console: Console) -> None:
    http, sessions = sqlite_console.http, sqlite_console.resources.sessions
    csrf = await sign_in(http, TOKEN)
    await add_user(sessions, sqlite_console.clock.now(), email="secret.person@example.com")
    with capture_logs() as logs:
        found = await http.post(
            "/admin/users/find", data={"csrf": csrf, "query": "secret.person@example.com"}
        )
        await http.get(found.headers["location"])
        await http.post("/admin/users/find", data={"csrf": csrf, "query": "nobody@example.com"})
    assert logs, "the requests were logged"
    assert "example.com" not in repr(logs)


async def test_pages_escape_what_users_wrote(sqlite_console: Console) -> None:
    http, sessions = sqlite_console.http, sqlite_console.resources.sessions
    await sign_in(http, TOKEN)
    user = await add_user(
        sessions, sqlite_console.clock.now(), first_name="<script>alert(1)</script>"
    )
    page = await http.get(f"/admin/users/{user}")
    assert "<script>alert(1)" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_purge_needs_the_typed_word(sqlite_console: Console) -> None:
    http, broker, now = sqlite_console.http, sqlite_console.broker, sqlite_console.clock.now()
    csrf = await sign_in(http, TOKEN)
    for _ in range(3):
        await broker.publish_dead(uuid.uuid4(), "http 400", now)
    for word in ("", "Purge!", "yes"):
        refused = await http.post("/admin/dead-letters/purge", data={"csrf": csrf, "confirm": word})
        assert refused.status_code == 400
        assert 'id="purge-refused"' in refused.text
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 3
    done = await http.post("/admin/dead-letters/purge", data={"csrf": csrf, "confirm": "purge"})
    assert done.status_code == 303
    assert done.headers["location"] == "/admin/dead-letters?purged=3"
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 0
    assert "Purged 3 dead letters." in (await http.get(done.headers["location"])).text


async def test_replay_goes_through_the_dlq_code(console: Console) -> None:
    """One id replays that row only (reset, republished, its copy gone); the rest stays."""
    http, broker, sessions = console.http, console.broker, console.resources.sessions
    now = console.clock.now()
    csrf = await sign_in(http, TOKEN)
    rows = []
    for _ in range(2):
        user = await add_user(sessions, now)
        row = await ledger_row(sessions, user, "dead", now - timedelta(minutes=5), attempts=8)
        await broker.publish_dead(row, "http 400", now - timedelta(minutes=5))
        rows.append(row)
    done = await http.post("/admin/dead-letters/replay", data={"csrf": csrf, "ids": str(rows[0])})
    assert done.status_code == 303
    assert done.headers["location"] == "/admin/dead-letters?replayed=1&notDead=0&missing=0"
    assert await broker.queue_depth(MAIN_QUEUE) == 1
    assert [d.message_id for d in await broker.dead_letters(10)] == [rows[1]]
    async with sessions() as session:
        status = dict((await session.execute(select(MessageLog.id, MessageLog.status))).all())
    assert status == {rows[0]: "queued", rows[1]: "dead"}

    everything = await http.post("/admin/dead-letters/replay", data={"csrf": csrf})
    assert everything.headers["location"] == "/admin/dead-letters?replayed=1&notDead=0&missing=0"
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 0
    assert await broker.queue_depth(MAIN_QUEUE) == 2
