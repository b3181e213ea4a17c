"""The console's one router: pages under /admin, their actions, sign-in, and static assets.

Pages without a session redirect to the sign-in form; actions without one answer 401, and
with a missing or wrong CSRF token 403. Each action calls the code the CLI and the API call:
`delivery.dlq` for replays, the broker's purge, the users service for a user.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader

from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.api.security import RateLimiter
from birthday_scheduler.clock import Clock
from birthday_scheduler.console import session as sessions
from birthday_scheduler.console.views import dead_letters, overview, users
from birthday_scheduler.delivery import dlq
from birthday_scheduler.errors import NotFoundError, ProblemError
from birthday_scheduler.infra.broker.base import Broker
from birthday_scheduler.infra.logging import get_logger

log = get_logger(__name__)
_HERE = Path(__file__).parent
PREFIX = "/admin"
_PRE_COOKIE = "bs_console_signin"  # the sign-in form's double-submit CSRF value
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
# Everything is served by the app itself: scripts, styles and images from /admin/static only.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages carry emails: never kept by a browser or a proxy
}


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=True,  # every value, whatever the template's name
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    return env


def _utc(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "—"


def _static_files() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in (_HERE / "static").iterdir():
        if path.suffix in _STATIC_TYPES:
            files[path.name] = (path.read_bytes(), _STATIC_TYPES[path.suffix])
    return files


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form body (the body guard bounds its size); the last value of a key wins."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(parse_qsl(body, keep_blank_values=True))


class Console:
    """What the routes share: the templates, the session signer and the open/guarded mode."""

    def __init__(self, context: ApiContext, schema_head: str) -> None:
        self.tokens = tuple(t.get_secret_value() for t in context.settings.api_tokens)
        # No tokens: the API is open too, which start-up allows only on loopback (or when
        # ALLOW_UNAUTHENTICATED says so); the console still uses a session, for CSRF.
        self.open = not self.tokens
        key = sessions.key_from_tokens(self.tokens) if self.tokens else sessions.random_key()
        self.signer = sessions.Signer(key)
        self.env = _templates()
        self.head = schema_head

    @staticmethod
    def context(request: Request) -> ApiContext:
        context: ApiContext = request.app.state.context
        return context

    def now(self, request: Request) -> float:
        return self.context(request).clock.now().timestamp()

    def session(self, request: Request) -> sessions.Session | None:
        return self.signer.verify(request.cookies.get(sessions.COOKIE), self.now(request))

    def render(
        self,
        template: str,
        session: sessions.Session | None,
        status: int = 200,
        *,
        csrf: str | None = None,
        **values: Any,
    ) -> HTMLResponse:
        if csrf is None:
            csrf = self.signer.csrf_token(session) if session is not None else ""
        html = self.env.get_template(template).render(
            csrf=csrf, open=self.open, signed_in=session is not None, **values
        )
        return HTMLResponse(html, status_code=status, headers=_HEADERS)

    def to_signin(self, request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        query = urlencode({"next": sessions.safe_next(target)})
        return RedirectResponse(f"{PREFIX}/signin?{query}", status_code=303)

    def sign_in(self, request: Request, target: str) -> RedirectResponse:
        cookie, _ = self.signer.issue(self.now(request))
        response = RedirectResponse(sessions.safe_next(target), status_code=303)
        response.set_cookie(
            sessions.COOKIE,
            cookie,
            max_age=sessions.TTL_S,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(_PRE_COOKIE, path=f"{PREFIX}/signin")
        return response

    async def action(self, request: Request) -> tuple[sessions.Session, dict[str, str]]:
        """The session and form of an action, or 401 (no session) / 403 (bad CSRF token)."""
        session = self.session(request)
        if session is None:
            raise ProblemError(401, "Unauthorized", "Sign in to the console first.")
        form = await _form(request)
        if not self.signer.csrf_valid(session, form.get("csrf")):
            raise ProblemError(403, "Forbidden", "The form's CSRF token is missing or wrong.")
        return session, form


def _broker(context: ApiContext) -> Broker:
    if context.broker is None:
        raise ProblemError(503, "Service Unavailable", "This process has no queue.")
    return context.broker


def build_router(context: ApiContext, schema_head: str) -> APIRouter:
    """`schema_head`: the revision the health probes compare with, read once by the app."""
    console = Console(context, schema_head)
    statics = _static_files()
    limit = Depends(RateLimiter(context.settings.rate_limit_per_minute))
    router = APIRouter(prefix=PREFIX, include_in_schema=False, dependencies=[limit])

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in statics:
            raise NotFoundError("No such file.")
        body, media_type = statics[name]
        return Response(body, media_type=media_type, headers={"Cache-Control": "max-age=300"})

    @router.get("/signin")
    async def signin_form(request: Request, next: str = PREFIX) -> Response:
        if console.session(request) is not None:
            return RedirectResponse(sessions.safe_next(next), status_code=303)
        if console.open:
            return console.sign_in(request, next)
        return _signin_page(console, next, None, 200)

    @router.post("/signin")
    async def signin(request: Request) -> Response:
        form = await _form(request)
        target = form.get("next", PREFIX)
        pre = request.cookies.get(_PRE_COOKIE, "")
        if not pre or not secrets.compare_digest(pre, form.get("csrf", "")):
            return _signin_page(console, target, "The form expired; sign in again.", 403)
        if not console.open and not sessions.token_matches(form.get("token", ""), console.tokens):
            log.warning("console.signin_refused")
            return _signin_page(console, target, "That token is not valid.", 401)
        log.info("console.signed_in")
        return console.sign_in(request, target)

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        await console.action(request)
        response = RedirectResponse(f"{PREFIX}/signin", status_code=303)
        response.delete_cookie(sessions.COOKIE, path=PREFIX)
        return response

    @router.get("")
    async def overview_page(request: Request) -> Response:
        session = console.session(request)
        if session is None:
            return console.to_signin(request)
        data = await overview.build(console.context(request), console.head)
        return console.render("overview.html", session, page="overview", o=data)

    @router.get("/overview/live")
    async def overview_live(request: Request) -> Response:
        session = console.session(request)
        if session is None:
            raise ProblemError(401, "Unauthorized", "Sign in to the console first.")
        data = await overview.build(console.context(request), console.head)
        return console.render("_overview_live.html", session, o=data)

    @router.get("/users")
    async def users_page(request: Request) -> Response:
        session = console.session(request)
        if session is None:
            return console.to_signin(request)
        return console.render("users.html", session, page="users", missing=False)

    @router.post("/users/find")
    async def find_user(request: Request) -> Response:
        session, form = await console.action(request)
        found = await users.find(console.context(request), form.get("query", ""))
        if found is None:
            return console.render("users.html", session, 404, page="users", missing=True)
        return RedirectResponse(f"{PREFIX}/users/{found}", status_code=303)

    @router.get("/users/{user_id}")
    async def user_page(request: Request, user_id: uuid.UUID) -> Response:
        session = console.session(request)
        if session is None:
            return console.to_signin(request)
        try:
            view = await users.build(console.context(request), user_id)
        except NotFoundError:
            return console.render("users.html", session, 404, page="users", missing=True)
        return console.render("user.html", session, page="users", v=view)

    @router.get("/dead-letters")
    async def dead_letters_page(request: Request) -> Response:
        session = console.session(request)
        if session is None:
            return console.to_signin(request)
        broker = console.context(request).broker
        data = await dead_letters.build(broker) if broker is not None else None
        return console.render(
            "dead_letters.html",
            session,
            page="dead_letters",
            d=data,
            done=_done(request.query_params),
            purge_word=dead_letters.PURGE_WORD,
        )

    @router.post("/dead-letters/replay")
    async def replay(request: Request) -> Response:
        _, form = await console.action(request)
        context = console.context(request)
        runtime = _runtime(context)
        ids: list[uuid.UUID] = []
        for text in form.get("ids", "").split():
            try:
                ids.append(uuid.UUID(text))
            except ValueError:
                raise ProblemError(400, "Bad Request", "Give dead letters by their ids.") from None
        if ids:
            report = await dlq.replay(context.sessions, _broker(context), ids, *runtime)
            counts = (len(report.replayed), len(report.not_dead), len(report.missing))
        else:  # every dead letter, page by page, as `dlq replay --all`
            total = [0, 0]

            def on_page(page: dlq.ReplayReport) -> None:
                total[0] += len(page.replayed)
                total[1] += len(page.not_dead)

            await dlq.replay_all(context.sessions, _broker(context), *runtime, on_page)
            counts = (total[0], total[1], 0)
        log.info("console.dlq_replayed", replayed=counts[0], not_dead=counts[1], missing=counts[2])
        query = urlencode({"replayed": counts[0], "notDead": counts[1], "missing": counts[2]})
        return RedirectResponse(f"{PREFIX}/dead-letters?{query}", status_code=303)

    @router.post("/dead-letters/purge")
    async def purge(request: Request) -> Response:
        session, form = await console.action(request)
        broker = _broker(console.context(request))
        if form.get("confirm", "").strip() != dead_letters.PURGE_WORD:
            data = await dead_letters.build(broker)
            return console.render(
                "dead_letters.html",
                session,
                400,
                page="dead_letters",
                d=data,
                done={},
                purge_word=dead_letters.PURGE_WORD,
                purge_refused=True,
            )
        purged = await broker.purge_dead_letters()
        log.info("console.dlq_purged", purged=purged)
        return RedirectResponse(f"{PREFIX}/dead-letters?purged={purged}", status_code=303)

    return router


def _runtime(context: ApiContext) -> tuple[Clock, timedelta]:
    """The clock and ledger lease a replay takes, as the CLI's resources give them."""
    return context.clock, timedelta(seconds=context.settings.message_visibility_timeout_s)


def _done(params: Mapping[str, str]) -> dict[str, int]:
    """The counts an action redirected with (numbers only; anything else is dropped)."""
    keys = ("replayed", "notDead", "missing", "purged")
    return {k: int(params[k]) for k in keys if params.get(k, "").isdigit()}


def _signin_page(console: Console, target: str, error: str | None, status: int) -> Response:
    # Double submit: the form and a cookie carry the same random value, which another site can
    # neither read nor set, so it cannot sign a browser in to a session of its choosing.
    pre = secrets.token_urlsafe(16)
    response = console.render(
        "signin.html",
        None,
        status,
        csrf=pre,
        page="signin",
        next=sessions.safe_next(target),
        error=error,
    )
    response.set_cookie(
        _PRE_COOKIE, pre, max_age=3600, path=f"{PREFIX}/signin", httponly=True, samesite="strict"
    )
    return response
