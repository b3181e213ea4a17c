"""A live console for the browser tests: the whole pipeline in one process (scheduler, worker,
simulator, in-process queue, the machine's PostgreSQL) with the API served by uvicorn on a
free loopback port, all on an event loop in a thread of its own.

Playwright's sync API then drives Debian's chromium from plain `def` tests in the main thread,
away from pytest-asyncio's session loop; the tests reach the pipeline (seeding, reading the
ledger and the simulator) through `LiveConsole.call`, which runs a coroutine on its loop.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Playwright

from birthday_scheduler.api.app import create_app
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.simulator.app import SimulatorConfig
from pipeline_support import Pipeline, open_pipeline, pipeline_settings
from support import drop_database, eventually, free_port, pg_admin, pg_url

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
# As the machine's notes give them: headless, as root, and none of chromium's own calls out
# (updates, sync, safe browsing), which a closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "console"
START_WITHIN_S = 30.0


class LiveConsole:
    def __init__(self, template: str, token: str) -> None:
        self.database = f"{template}_console_{uuid.uuid4().hex[:6]}"
        self.template = template
        self.token = token
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-console", daemon=True)
        self.pipeline: Pipeline | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_WITHIN_S) or self._failure is not None:
            raise AssertionError(f"the console did not start: {self._failure!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        if self._failure is not None:
            raise self._failure

    def call(self, work: Callable[[Pipeline], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run `work(pipeline)` on the console's loop and return its result."""
        assert self._loop is not None
        assert self.pipeline is not None
        pipeline = self.pipeline

        async def run() -> T:
            return await work(pipeline)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await pg_admin(f'CREATE DATABASE "{self.database}" TEMPLATE "{self.template}"')
        try:
            settings = pipeline_settings(
                pg_url(self.database), api_tokens=self.token, rate_limit_per_minute=0
            )
            async with open_pipeline(settings, MemoryBroker(), SimulatorConfig()) as pipeline:
                self.pipeline = pipeline
                context = runtime.api_context(
                    pipeline.resources, runs_consumer=True, breaker=pipeline.breaker
                )
                serving = asyncio.create_task(
                    runtime.serve_http(create_app(context), "127.0.0.1", self.port, self._stop, 2)
                )
                await self._until_listening()
                self._ready.set()
                await serving
        finally:
            await drop_database(self.database)

    async def _until_listening(self) -> None:
        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await eventually(listening, within=START_WITHIN_S)


@dataclass
class Tab:
    """A page in a fresh browser context, recording every console error and page error."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def expected_failed_load(self, status: int) -> None:
        """Forget the one log line the browser writes for a page the test expects to answer
        `status` (a refused sign-in, a user not found): the page's status, not a fault."""
        line = f"Failed to load resource: the server responded with a status of {status} "
        matching = [e for e in self.errors if e.startswith(line)]
        assert len(matching) == 1, f"expected one {status} load in {self.errors}"
        self.errors.remove(matching[0])

    def assert_clean(self) -> None:
        assert self.errors == [], f"errors in the browser console: {self.errors}"

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def open_tab(browser: Browser, base_url: str) -> Iterator[Tab]:
    context = browser.new_context(base_url=base_url, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    tab = Tab(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            tab.errors.append(message.text)

    def on_page_error(error: Error) -> None:
        tab.errors.append(f"page error: {error.message}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    try:
        yield tab
    finally:
        context.close()


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def sign_in(tab: Tab, token: str) -> None:
    page = tab.page
    page.goto("/admin/signin")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin")
