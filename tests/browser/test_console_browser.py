"""The operator console in a real browser: Debian's chromium, headless, driven by Playwright
against the whole pipeline (scheduler, worker, simulator, PostgreSQL) serving /admin.

Each test opens a fresh browser context and fails on any error in the browser's console. The
screenshots land in test-artifacts/console/ (git-ignored): signin, overview, user, dead-letters.
The tests run in file order against one live console; each seeds what it looks at.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from birthday_scheduler.infra.broker.base import DEAD_LETTER_QUEUE
from birthday_scheduler.messages.models import MessageLog
from browser_support import LiveConsole, Tab, launch, open_tab, sign_in
from console_support import add_user, ledger_row, plan
from pipeline_support import Pipeline, set_email, wait_for_statuses
from support import wait_for

TOKEN = "browser-console-token"
pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def console(pg_template: str) -> Iterator[LiveConsole]:
    live = LiveConsole(pg_template, TOKEN)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        opened = launch(playwright)
        yield opened
        opened.close()


@pytest.fixture
def tab(browser: Browser, console: LiveConsole) -> Iterator[Tab]:
    yield from open_tab(browser, console.base_url)


def hour_label(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:00Z")


def focused_id(page: Page) -> str:
    return str(page.evaluate("document.activeElement && document.activeElement.id"))


def test_sign_in_with_the_keyboard_only(tab: Tab) -> None:
    page = tab.page
    page.goto("/admin")
    expect(page).to_have_url("/admin/signin?next=%2Fadmin")  # no session: the form
    assert focused_id(page) == "token"  # the form takes focus: no mouse needed
    tab.screenshot("signin")
    page.keyboard.type("a wrong token")
    page.keyboard.press("Tab")
    assert focused_id(page) == "signin-submit"
    page.keyboard.press("Enter")
    expect(page.locator("#signin-error")).to_have_text("That token is not valid.")
    tab.expected_failed_load(401)  # the refused sign-in answers 401, which the browser logs
    assert focused_id(page) == "token"  # the form again, focused again
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")  # Enter in the field submits the form
    page.wait_for_url("**/admin")
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    # The console's own links are reachable by Tab from the top of the page.
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Users"
    page.keyboard.press("Enter")
    page.wait_for_url("**/admin/users")
    tab.assert_clean()


def test_the_overview_charts_the_seeded_counts_and_refreshes_itself(
    tab: Tab, console: LiveConsole
) -> None:
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    due = {hour + timedelta(hours=5, minutes=10): 3, hour + timedelta(hours=30, minutes=20): 2}
    sent_at = hour - timedelta(hours=2) + timedelta(minutes=10)
    dead_at = hour - timedelta(hours=3) + timedelta(minutes=5)

    async def seed(pipeline: Pipeline) -> None:
        sessions = pipeline.sessions
        for fire_at, count in due.items():
            for _ in range(count):
                await plan(sessions, await add_user(sessions, now), fire_at)
        for _ in range(4):
            await ledger_row(sessions, await add_user(sessions, now), "sent", sent_at)
        await ledger_row(sessions, await add_user(sessions, now), "failed", sent_at)
        await ledger_row(sessions, await add_user(sessions, now), "dead", dead_at)

    console.call(seed)
    sign_in(tab, TOKEN)
    page = tab.page
    due_chart = page.locator("#due svg.chart")
    expect(due_chart).to_be_visible()
    expect(due_chart).to_have_attribute("data-total", "5")
    for fire_at, count in due.items():
        bar = due_chart.locator(f'g.bar[data-hour="{hour_label(fire_at)}"]')
        expect(bar).to_have_attribute("data-count", str(count))
        expect(bar.locator("rect")).to_be_visible()
    outcomes = page.locator("#outcomes svg.chart")
    expect(outcomes).to_have_attribute("data-total", "6")
    sent_hour = outcomes.locator(f'g.bar[data-hour="{hour_label(sent_at)}"]')
    expect(sent_hour).to_have_attribute("data-count", "5")
    expect(sent_hour.locator('rect[data-series="sent"]')).to_have_attribute("data-count", "4")
    expect(sent_hour.locator('rect[data-series="retried"]')).to_have_attribute("data-count", "1")
    dead_hour = outcomes.locator(f'g.bar[data-hour="{hour_label(dead_at)}"]')
    expect(dead_hour.locator('rect[data-series="dead"]')).to_have_attribute("data-count", "1")
    expect(page.locator('[data-outcome="sent"]')).to_have_text("sent 4")
    expect(page.locator('tr[data-component="database"] .status')).to_have_text("up")
    expect(page.locator('tr[data-component="consumer"] .status')).to_have_text("up")
    expect(page.locator("#dlq-depth")).to_have_text("0")
    tab.screenshot("overview")

    # The live part is fetched again every few seconds: a new timestamp, the same document.
    page.evaluate("window.__notReloaded = true")
    stamp = page.locator("#generated-at").get_attribute("datetime")
    expect(page.locator("#generated-at")).not_to_have_attribute(
        "datetime", stamp or "", timeout=12_000
    )
    assert page.evaluate("window.__notReloaded === true")
    tab.assert_clean()


def test_find_a_user_by_email_and_see_their_history(tab: Tab, console: LiveConsole) -> None:
    now = datetime.now(UTC)
    email = f"Mixed.Case.{uuid.uuid4().hex[:6]}@Example.com"
    fire_at = (now + timedelta(days=3)).replace(hour=13, minute=0, second=0, microsecond=0)
    last_year = now - timedelta(days=365)

    async def seed(pipeline: Pipeline) -> uuid.UUID:
        sessions = pipeline.sessions
        user = await add_user(
            sessions, now, first_name="Grace", email=email, timezone="America/New_York"
        )
        await plan(sessions, user, fire_at)
        await ledger_row(
            sessions, user, "sent", last_year, attempts=3, last_error="http 503: outage"
        )
        return user

    user_id = console.call(seed)
    sign_in(tab, TOKEN)
    page = tab.page
    page.get_by_role("link", name="Users").click()
    page.get_by_label("Email (exact, any case) or user id").fill(email.lower())
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/admin/users/{user_id}")
    expect(page.locator("#user-email")).to_have_text(email)
    expect(page.locator("#next-utc")).to_have_text(fire_at.strftime("%Y-%m-%d %H:%M UTC"))
    local = fire_at.astimezone(ZoneInfo("America/New_York"))
    expect(page.locator("#next-local")).to_have_text(
        f"{local.strftime('%Y-%m-%d %H:%M')} America/New_York"
    )
    row = page.locator("#history tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".status")).to_have_text("sent")
    expect(row.locator(".attempts")).to_have_text("3")
    expect(row.locator(".last-error")).to_have_text("http 503: outage")
    tab.screenshot("user")

    page.get_by_role("link", name="Users").click()
    page.get_by_label("Email (exact, any case) or user id").fill("nobody@example.com")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#not-found")).to_be_visible()
    tab.expected_failed_load(404)  # the page for no user answers 404
    tab.assert_clean()


_blanks = itertools.count()


def _dead_letter(console: LiveConsole) -> uuid.UUID:
    """A user whose address is blank: the simulator answers 400, the row is dead after one
    attempt and its copy is in the DLQ. (Blank addresses of different lengths: live users'
    addresses are unique.)"""
    blank = " " * next(_blanks)

    async def seed(pipeline: Pipeline) -> uuid.UUID:
        (broken,) = await pipeline.seed(1, email=blank)
        await wait_for_statuses(pipeline.sessions, [broken.message_id], "dead", within=20)
        return broken.message_id

    return console.call(seed)


def test_replay_a_dead_letter_and_the_service_accepts_it_once(
    tab: Tab, console: LiveConsole
) -> None:
    message_id = _dead_letter(console)

    async def fix_address(pipeline: Pipeline) -> None:
        async with pipeline.sessions() as session:
            row = await session.get(MessageLog, message_id)
            assert row is not None
            user_id = row.user_id
        await set_email(pipeline.sessions, user_id, f"fixed-{message_id.hex[:8]}@example.com")

    console.call(fix_address)
    sign_in(tab, TOKEN)
    page = tab.page
    page.get_by_role("link", name="Dead letters").click()
    letter = page.locator(f'tr[data-letter="{message_id}"]')
    expect(letter).to_contain_text("http 400")
    tab.screenshot("dead-letters")
    letter.get_by_role("button", name="Replay").click()
    expect(page.locator("#done")).to_have_text("Replayed 1; no longer dead 0; not in the queue 0.")
    expect(page.locator(f'tr[data-letter="{message_id}"]')).to_have_count(0)

    async def accepted(pipeline: Pipeline) -> int:
        keys = [d["idempotencyKey"] for d in await pipeline.deliveries()]
        return keys.count(str(message_id))

    wait_for(lambda: console.call(accepted) == 1, "the replayed message accepted", within=20)

    async def row_and_stats(pipeline: Pipeline) -> tuple[str, int, int]:
        rows = await wait_for_statuses(pipeline.sessions, [message_id], "sent", within=20)
        stats = await pipeline.stats()
        return rows[message_id].status, rows[message_id].attempts, stats["duplicates"]

    assert console.call(row_and_stats) == ("sent", 1, 0)
    # Replaying it again finds no dead letter: still accepted exactly once.
    page.reload()
    page.get_by_role("button", name="Replay all").click()
    expect(page.locator("#done")).to_contain_text("Replayed 0")
    assert console.call(accepted) == 1
    tab.assert_clean()


def test_purge_needs_the_typed_confirmation(tab: Tab, console: LiveConsole) -> None:
    first, second = _dead_letter(console), _dead_letter(console)

    async def depth(pipeline: Pipeline) -> int:
        return await pipeline.broker.queue_depth(DEAD_LETTER_QUEUE)

    sign_in(tab, TOKEN)
    page = tab.page
    page.get_by_role("link", name="Dead letters").click()
    for message_id in (first, second):
        expect(page.locator(f'tr[data-letter="{message_id}"]')).to_be_visible()
    before = console.call(depth)
    assert before >= 2
    page.get_by_label("Type purge").fill("purg")
    page.get_by_role("button", name="Purge").click()
    expect(page.locator("#purge-refused")).to_be_visible()
    assert console.call(depth) == before
    page.get_by_label("Type purge").fill("purge")
    page.get_by_role("button", name="Purge").click()
    expect(page.locator("#done")).to_have_text(f"Purged {before} dead letters.")
    expect(page.locator("#dlq-count")).to_have_text("0")
    assert console.call(depth) == 0
    tab.expected_failed_load(400)  # the refused purge's page answers 400
    tab.assert_clean()


def test_nothing_is_shown_or_done_without_a_session(tab: Tab, console: LiveConsole) -> None:
    page = tab.page
    user_id = uuid.uuid4()
    for path in ["/admin", "/admin/users", f"/admin/users/{user_id}", "/admin/dead-letters"]:
        page.goto(path)
        expect(page).to_have_url(f"/admin/signin?next={path.replace('/', '%2F')}")
        expect(page.get_by_label("API token")).to_be_visible()
    request = page.context.request
    assert request.get("/admin/overview/live").status == 401
    actions = [
        "/admin/users/find",
        "/admin/dead-letters/replay",
        "/admin/dead-letters/purge",
        "/admin/signout",
    ]
    for path in actions:
        response = request.post(path, form={"confirm": "purge"}, max_redirects=0)
        assert response.status == 401, path
    # Signed in, an action without the page's CSRF token is refused as well.
    sign_in(tab, TOKEN)
    for path in actions:
        response = request.post(path, form={"confirm": "purge"}, max_redirects=0)
        assert response.status == 403, path
    tab.assert_clean()
