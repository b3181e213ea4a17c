"""The console's session cookie and CSRF tokens: pure functions of a key, a clock and input.

A session is `v1.<expires>.<nonce>.<mac>`, the MAC an HMAC-SHA256 over the rest: nothing is kept
on the server, so any API replica holding the same key accepts it until it expires. Its CSRF
token is a second MAC over the session's nonce (bound to the session, so a token read from one
session is worthless in another) and is sent in every action form.

The key is derived from API_TOKENS: replicas that share the tokens share sessions, and changing
the tokens (revoking a leaked one) signs every operator out. Without tokens (an open console on
loopback) the key is random per process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

COOKIE = "bs_console"
TTL_S = 8 * 3600  # a working day; the cookie's Max-Age is the same
_VERSION = "v1"
_CONTEXT = b"birthday-scheduler console session v1"


def key_from_tokens(tokens: Sequence[str]) -> bytes:
    """A signing key derived from the API tokens (their order does not matter)."""
    material = "\x00".join(sorted(tokens)).encode()
    return hmac.new(_CONTEXT, material, hashlib.sha256).digest()


def random_key() -> bytes:
    return secrets.token_bytes(32)


def token_matches(supplied: str, tokens: Sequence[str]) -> bool:
    """Compare against every token, so the time taken does not tell which one matched."""
    encoded = supplied.encode()
    return bool(tokens) and any([hmac.compare_digest(encoded, token.encode()) for token in tokens])


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int  # Unix seconds


@dataclass(frozen=True)
class Signer:
    key: bytes

    def _mac(self, purpose: str, payload: str) -> str:
        message = f"{purpose}|{payload}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def issue(self, now: float, ttl_s: int = TTL_S) -> tuple[str, Session]:
        session = Session(nonce=secrets.token_urlsafe(16), expires=int(now) + ttl_s)
        payload = f"{_VERSION}.{session.expires}.{session.nonce}"
        return f"{payload}.{self._mac('session', payload)}", session

    def verify(self, cookie: str | None, now: float) -> Session | None:
        """The session a cookie carries, or None when absent, forged, altered or expired."""
        if not cookie:
            return None
        payload, _, mac = cookie.rpartition(".")
        version, _, rest = payload.partition(".")
        expires_text, _, nonce = rest.partition(".")
        if version != _VERSION or not expires_text.isdigit() or not nonce:
            return None
        if not hmac.compare_digest(mac.encode(), self._mac("session", payload).encode()):
            return None
        if int(expires_text) <= now:
            return None
        return Session(nonce=nonce, expires=int(expires_text))

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.nonce)

    def csrf_valid(self, session: Session, supplied: str | None) -> bool:
        if not supplied:
            return False
        return hmac.compare_digest(supplied.encode(), self.csrf_token(session).encode())


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only, never another site."""
    inside = bool(target) and (target == "/admin" or str(target).startswith("/admin/"))
    if inside and not any(ch in str(target) for ch in "\\\r\n"):
        return str(target)
    return "/admin"
