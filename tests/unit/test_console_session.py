"""The console's session cookie and CSRF token: signed, expiring, bound together, and where a
sign-in may send the browser next."""

from __future__ import annotations

import pytest

from birthday_scheduler.console import session as s

NOW = 1_800_000_000.0


@pytest.fixture
def signer() -> s.Signer:
    return s.Signer(s.key_from_tokens(["one", "two"]))


def test_a_session_verifies_until_it_expires(signer: s.Signer) -> None:
    cookie, issued = signer.issue(NOW, ttl_s=60)
    assert signer.verify(cookie, NOW) == issued
    assert signer.verify(cookie, NOW + 59) == issued
    assert signer.verify(cookie, NOW + 60) is None


@pytest.mark.parametrize("change", ["expiry", "nonce", "mac", "version"])
def test_an_altered_cookie_is_refused(signer: s.Signer, change: str) -> None:
    cookie, _ = signer.issue(NOW)
    version, expires, nonce, mac = cookie.split(".")
    altered = {
        "expiry": f"{version}.{int(expires) + 3600}.{nonce}.{mac}",
        "nonce": f"{version}.{expires}.{nonce}x.{mac}",
        "mac": f"{version}.{expires}.{nonce}.{'0' * len(mac)}",
        "version": f"v2.{expires}.{nonce}.{mac}",
    }[change]
    assert signer.verify(altered, NOW) is None


@pytest.mark.parametrize("cookie", [None, "", "garbage", "v1..", "v1.x.y.z", "...."])
def test_malformed_cookies_are_refused(signer: s.Signer, cookie: str | None) -> None:
    assert signer.verify(cookie, NOW) is None


def test_the_key_follows_the_token_set_not_its_order() -> None:
    assert s.key_from_tokens(["one", "two"]) == s.key_from_tokens(["two", "one"])
    cookie, _ = s.Signer(s.key_from_tokens(["one", "two"])).issue(NOW)
    # Revoking a token changes the key: every session signed with the old set ends.
    assert s.Signer(s.key_from_tokens(["one"])).verify(cookie, NOW) is None
    assert s.random_key() != s.random_key()


def test_the_csrf_token_belongs_to_its_session(signer: s.Signer) -> None:
    _, first = signer.issue(NOW)
    _, second = signer.issue(NOW)
    token = signer.csrf_token(first)
    assert signer.csrf_valid(first, token)
    assert not signer.csrf_valid(second, token)
    assert not signer.csrf_valid(first, None)
    assert not signer.csrf_valid(first, "")
    assert not signer.csrf_valid(first, token[:-1] + ("0" if token[-1] != "0" else "1"))


def test_token_matches_any_configured_token_only() -> None:
    assert s.token_matches("two", ["one", "two"])
    assert not s.token_matches("three", ["one", "two"])
    assert not s.token_matches("", ["one"])
    assert not s.token_matches("", [])


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/admin", "/admin"),
        ("/admin/users/abc", "/admin/users/abc"),
        ("/admin/dead-letters?purged=1", "/admin/dead-letters?purged=1"),
        (None, "/admin"),
        ("", "/admin"),
        ("https://evil.example/admin", "/admin"),
        ("//evil.example/admin", "/admin"),
        ("/administrator", "/admin"),
        ("/admin/\\evil", "/admin"),
        ("/admin/\r\nSet-Cookie: x", "/admin"),
        ("/users", "/admin"),
    ],
)
def test_after_sign_in_only_console_paths(target: str | None, expected: str) -> None:
    assert s.safe_next(target) == expected
