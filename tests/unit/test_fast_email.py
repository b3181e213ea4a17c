"""The import's email shortcut gives pydantic's (so email-validator's) verdict, every time: the
same normalized address when it decides, and never an address the library rejects."""

from __future__ import annotations

import string

import email_validator
import pydantic.networks
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic_core import PydanticCustomError

from birthday_scheduler.users import fast_email
from birthday_scheduler.users.schemas import UserWrite

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
# Characters that make email-validator quote, reject, map (IDNA/UTS-46) or split differently.
TRICKY = ' ."\\@<>()[],:;\t\r\néßİK\uff20\ufe6b\u0301\u200b'
TLDS = (
    "com",
    "COM",
    "org",
    "de",
    "local",
    "localhost",
    "test",
    "invalid",
    "onion",
    "arpa",
    "example",
    "internal",
    "home.arpa",
    "1",
    "123",
    "xn--p1ai",
    "xn--zz",
    "co.uk",
    "c-m",
    "a",
)

LOCAL = st.one_of(
    st.text(alphabet=ATEXT + ".", min_size=0, max_size=70),  # where the dots may go
    st.text(alphabet=ATEXT + "." + TRICKY, min_size=0, max_size=70),
    st.sampled_from(("info", "Postmaster", "WWW", "www.x", "noc1", "ftp")),
)
LABEL = st.text(
    alphabet=string.ascii_letters + string.digits + "-" + "éßK_", min_size=0, max_size=66
)
DOMAIN = st.builds(
    lambda labels, tld, dot: ".".join([*labels, tld]) + dot,
    st.lists(LABEL, min_size=0, max_size=4),
    st.sampled_from(TLDS),
    st.sampled_from(("", "", "", ".")),
)
ADDRESS = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN),
    st.builds(  # near the length limits: a long local part and long labels
        lambda local, labels: f"{local}@{'.'.join(labels)}.com",
        st.text(alphabet=ATEXT, min_size=55, max_size=70),
        st.lists(st.text(alphabet="abc-", min_size=55, max_size=64), min_size=1, max_size=4),
    ),
    st.text(max_size=80),
)

CASES = [
    "ada@example.com",
    "Ada.Lovelace+tag@Example.COM",  # the domain is lowercased, the local part kept
    "a!#$%&'*+/=?^_`{|}~-z@example.com",
    "ada@mail-1.example.co.uk",
    '"ada"@example.com',  # quoted: the library unquotes it
    '"ada lovelace"@example.com',
    "ada..lovelace@example.com",
    ".ada@example.com",
    "ada.@example.com",
    "ada@example.com.",
    "ada@.example.com",
    "ada@example..com",
    "ada@-example.com",
    "ada@example-.com",
    "ada@ab--cd.com",  # two letters then two hyphens: only Punycode may
    "ada@xn--bcher-kva.de",  # Punycode: the library decodes it
    "ada@bücher.de",
    "ada@BÜCHER.de",
    "ada@localhost",
    "ada@example",
    "ada@box.local",
    "ada@box.localhost",
    "ada@example.test",
    "ada@example.invalid",
    "ada@site.onion",
    "ada@4.3.2.1.in-addr.arpa",
    "ada@example.123",
    "ada@[127.0.0.1]",
    "Postmaster@example.com",  # a case-insensitive mailbox name: the library lowercases it
    "INFO@example.com",
    "Ada Lovelace <ada@example.com>",
    " ada@example.com ",
    "ada@example.com\n",
    "adé@example.com",
    "ada@exam ple.com",
    "ada\uff20example.com",
    "ada@@example.com",
    "a" * 64 + "@example.com",
    "a" * 65 + "@example.com",
    "a@" + "b" * 63 + ".com",
    "a@" + "b" * 64 + ".com",
    "a" * 64 + "@" + ".".join(["b" * 61] * 3) + ".com",  # 254 characters
    "a" * 64 + "@" + ".".join(["b" * 61] * 3) + ".comm",  # 255
    "a" * 60 + "@" + ".".join(["b" * 63] * 3) + ".com",  # domain of 195, total 256
    "",
    "@",
    "ada",
]


def _outcome(validate: object, value: str) -> tuple[str, ...]:
    try:
        return ("ok", *validate(value))  # type: ignore[operator]
    except PydanticCustomError as exc:
        return ("error", str(exc))


@pytest.mark.parametrize("address", CASES)
def test_hand_picked_addresses_get_pydantic_verdict(address: str) -> None:
    original = pydantic.networks.validate_email
    expected = _outcome(original, address)
    with fast_email.installed():
        assert _outcome(pydantic.networks.validate_email, address) == expected
    assert pydantic.networks.validate_email is original


@given(ADDRESS)
@settings(max_examples=3000, deadline=None)
@example("Ada@Example.COM")
def test_the_shortcut_never_differs_from_pydantic(address: str) -> None:
    expected = _outcome(pydantic.networks.validate_email, address)
    with fast_email.installed():
        assert _outcome(pydantic.networks.validate_email, address) == expected


@given(ADDRESS)
@settings(max_examples=3000, deadline=None)
def test_what_the_shortcut_accepts_email_validator_accepts_the_same(address: str) -> None:
    shortcut = fast_email.normalized(address)
    if shortcut is None:
        return
    parts = email_validator.validate_email(address, check_deliverability=False)
    assert parts.normalized == shortcut
    assert parts.local_part == shortcut.split("@")[0]


def test_the_plain_address_takes_the_shortcut() -> None:
    assert fast_email.normalized("Ada.Lovelace@Example.COM") == "Ada.Lovelace@example.com"
    for other in (
        '"ada"@example.com',
        "Postmaster@example.com",
        "ada@bücher.de",
        "ada@box.local",
        "a" * 65 + "@example.com",
        "ada@example.com.",
    ):
        assert fast_email.normalized(other) is None


def test_user_write_goes_through_the_shortcut_only_while_installed() -> None:
    body = {
        "firstName": "Ada",
        "lastName": "L",
        "email": "Ada@Example.COM",
        "dateOfBirth": "1990-07-01",
        "timezone": "UTC",
    }
    with fast_email.installed():
        assert UserWrite.model_validate(body).email == "Ada@example.com"
        assert fast_email._domain.cache_info().currsize == 1  # the shortcut was asked
    fast_email._domain.cache_clear()
    assert UserWrite.model_validate(body).email == "Ada@example.com"
    assert fast_email._domain.cache_info().currsize == 0
