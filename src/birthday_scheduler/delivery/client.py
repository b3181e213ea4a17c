"""HTTP client of the external message service: one pooled aiohttp session, outcomes classified.

`send()` never raises for anything the network or the service does; it answers with a
SendResult saying whether the message went out, may be retried, or never will. aiohttp, not
httpx: httpx's pool collapses under the concurrency a worker runs at.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

import aiohttp

from birthday_scheduler.clock import Clock, SystemClock
from birthday_scheduler.delivery.backoff import parse_retry_after


class Outcome(StrEnum):
    SENT = "sent"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    status: int | None
    # Short and free of personal data: it is logged and stored with the message.
    reason: str
    retry_after_s: float | None = None


# 408 is the server giving up waiting for our request, a time-out like any other.
_RETRYABLE_4XX = frozenset({408, 429})
# Enough of an error body to find a JSON error field; the rest is never looked at.
_MAX_BODY_BYTES = 16 * 1024
_MAX_DETAIL_CHARS = 200
_EMAIL_RE = re.compile(r"[^\s@\"'<>(),;:]+@[^\s@\"'<>(),;:]+")
_REDACTED = "<redacted>"


class MessageServiceClient:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout_s: float,
        max_connections: int = 100,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._url = url
        self._api_key = api_key or None
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._clock: Clock = clock or SystemClock()
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self._url

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(limit=max(1, self._max_connections))
        timeout = aiohttp.ClientTimeout(total=self._timeout_s, connect=min(self._timeout_s, 5.0))
        # raise_for_status off: every status is classified here, not raised.
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, raise_for_status=False
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, email: str, message: str, idempotency_key: str) -> SendResult:
        """POST one message. Classifies every HTTP or network outcome instead of raising."""
        if self._session is None:
            raise RuntimeError("MessageServiceClient.send() called before start()")
        headers = {"Idempotency-Key": idempotency_key}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            async with self._session.post(
                self._url,
                json={"email": email, "message": message},
                headers=headers,
                # A send endpoint that redirects is misconfigured, and following a redirect
                # could turn the POST into a GET that "succeeds" without sending anything.
                allow_redirects=False,
            ) as response:
                body = await _read_capped(response)
                return self._classify(response, body, (email, message))
        except TimeoutError:
            return SendResult(Outcome.RETRYABLE, None, f"timeout after {self._timeout_s:.1f}s")
        except aiohttp.ClientConnectionError as exc:
            return SendResult(Outcome.RETRYABLE, None, f"connection error: {type(exc).__name__}")
        except aiohttp.ClientError as exc:
            # Malformed responses and the like: the next attempt may well go through.
            return SendResult(Outcome.RETRYABLE, None, f"client error: {type(exc).__name__}")

    def _classify(
        self, response: aiohttp.ClientResponse, body: bytes, secrets: tuple[str, ...]
    ) -> SendResult:
        status = response.status
        if 200 <= status < 300:
            return SendResult(Outcome.SENT, status, f"http {status}")
        if status >= 500 or status in _RETRYABLE_4XX:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock.now())
            return SendResult(Outcome.RETRYABLE, status, f"http {status}", retry_after)
        detail = _error_detail(body, secrets)
        reason = f"http {status}: {detail}" if detail else f"http {status}"
        return SendResult(Outcome.PERMANENT, status, reason)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    # Reading the (small) body lets the connection go back to the pool; the cap keeps a
    # misbehaving server from making us buffer megabytes of error page.
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(8192):
        chunks.append(chunk)
        size += len(chunk)
        if size >= _MAX_BODY_BYTES:
            break
    return b"".join(chunks)


def _error_detail(body: bytes, secrets: tuple[str, ...]) -> str | None:
    """The `error`/`problem` text of a JSON error body, truncated and stripped of PII."""
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    for key in ("error", "problem"):
        value = document.get(key)
        if isinstance(value, str) and value.strip():
            return redact(value, secrets)[:_MAX_DETAIL_CHARS]
    return None


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Replace the given values (the address and text we sent) and anything email-like."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return _EMAIL_RE.sub(_REDACTED, text)


__all__ = ["MessageServiceClient", "Outcome", "SendResult", "redact"]
