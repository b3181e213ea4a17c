"""FORWARDED_ALLOW_IPS: IPs and CIDRs, or `*` alone; anything else stops start-up in one line."""

from __future__ import annotations

import pytest

from birthday_scheduler.errors import ConfigurationError
from birthday_scheduler.settings import load_settings


def test_default_trusts_only_the_loopback_proxy() -> None:
    assert load_settings({}).forwarded_allow_ips == ("127.0.0.1",)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("10.0.0.0/8, 127.0.0.1", ("10.0.0.0/8", "127.0.0.1")),
        ("*", ("*",)),
        ("::1,fd00::/8", ("::1", "fd00::/8")),
        ("", ()),
    ],
)
def test_valid_values(value: str, parsed: tuple[str, ...]) -> None:
    assert load_settings({"FORWARDED_ALLOW_IPS": value}).forwarded_allow_ips == parsed


@pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.1/8", "*,10.0.0.1", "300.1.1.1"])
def test_bad_values_stop_start_up_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"FORWARDED_ALLOW_IPS": value})
    message = str(raised.value)
    assert "FORWARDED_ALLOW_IPS" in message
    assert "\n" not in message
