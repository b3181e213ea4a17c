"""A shortcut through email-validator for the plain address, with its verdict unchanged.

The API's `EmailStr` calls pydantic's `validate_email`, which calls email-validator. For an
address made only of a plain ASCII dot-atom local part, one `@` and ASCII letter-digit-hyphen
domain labels (no spaces, quotes, angle brackets, Unicode or domain literal), that library's
answer reduces to: the local part as written (it matches the library's own DOT_ATOM_TEXT, which
needs no normalization), the domain as the library normalizes it, and the length limits. So:

- the domain's verdict and normalized form come from email-validator itself, asked once per
  domain (with a probe address on it, under the options pydantic uses) and remembered;
- a local part email-validator rewrites (a case-insensitive mailbox name such as "Postmaster",
  which it lowercases), an address over 254 characters, a local part over 64, and every address
  the pattern does not match go to pydantic's `validate_email` as before, which also raises
  every error, worded as before.

tests/unit/test_fast_email.py checks, with Hypothesis and by hand, that the shortcut returns
what pydantic's `validate_email` returns, and accepts nothing it rejects.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator

import email_validator
import pydantic.networks
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"  # RFC 5322 atext, ASCII: email-validator's ATEXT
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN = re.compile(rf"([{_ATEXT}]+(?:\.[{_ATEXT}]+)*)@({_LABEL}(?:\.{_LABEL})+)")
_EMAIL_MAX = 254  # RFC 5321 4.5.3.1.3, email-validator's EMAIL_MAX_LENGTH
_LOCAL_MAX = 64  # only enforced by email-validator in strict mode; not taken here either way
_REWRITTEN_LOCAL = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)
_PROBE_LOCAL = "a"


def normalized(address: str) -> str | None:
    """email-validator's normalized form of `address` when it is a plain address the library
    accepts; None when the shortcut does not decide (the caller asks the library)."""
    if len(address) > _EMAIL_MAX:
        return None
    match = _PLAIN.fullmatch(address)
    if match is None:
        return None
    local, domain = match.groups()
    if len(local) > _LOCAL_MAX or local.lower() in _REWRITTEN_LOCAL:
        return None
    checked = _domain(domain)
    if checked is None:
        return None
    # Lowercasing keeps an ASCII domain's length, but say so rather than assume it.
    return f"{local}@{checked}" if len(local) + 1 + len(checked) <= _EMAIL_MAX else None


@functools.lru_cache(maxsize=16_384)
def _domain(domain: str) -> str | None:
    """email-validator's normalized domain, or None if it rejects it, by validating an address
    on it exactly as pydantic does (the library's options and special-use names included)."""
    try:
        parts = email_validator.validate_email(
            f"{_PROBE_LOCAL}@{domain}", check_deliverability=False
        )
    except email_validator.EmailNotValidError:
        return None
    return str(parts.domain)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Route pydantic's email check (EmailStr, so the API's UserWrite) through the shortcut
    while the block runs; pydantic's own function is put back afterwards."""
    original = pydantic.networks.validate_email

    def validate_email(value: str) -> tuple[str, str]:
        shortcut = normalized(value) if isinstance(value, str) else None
        if shortcut is None:
            return original(value)
        return shortcut[: shortcut.index("@")], shortcut

    _domain.cache_clear()  # the library's options are read again for each import
    pydantic.networks.validate_email = validate_email
    try:
        yield
    finally:
        pydantic.networks.validate_email = original
