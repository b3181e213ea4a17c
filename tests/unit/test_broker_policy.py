"""The rules both queue adapters share: body format, requeue pauses, reading dead letters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from birthday_scheduler.infra.broker.base import DeadLetter
from birthday_scheduler.infra.broker.policy import (
    DELIVERY_LIMIT_REASON,
    decode_body,
    encode_body,
    read_dead_letter,
    requeue_delay,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_body_round_trips_and_carries_only_the_id() -> None:
    message_id = uuid.uuid4()
    assert encode_body(message_id) == f'{{"id":"{message_id}"}}'.encode()
    assert decode_body(encode_body(message_id)) == message_id


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"\xff\xfe", b"[]", b'{"id": 5}', b'{"id": "nope"}', b'{"other": "x"}'],
)
def test_unreadable_bodies_are_value_errors(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError subclass means malformed
        decode_body(body)


def test_requeue_delay_doubles_up_to_the_cap_and_can_be_disabled() -> None:
    assert [requeue_delay(n, base=0.5, cap=30) for n in range(8)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]
    assert requeue_delay(10_000, base=0.5, cap=30) == 30.0
    assert requeue_delay(3, base=0) == 0.0


def test_reads_a_copy_published_with_a_reason() -> None:
    message_id = uuid.uuid4()
    headers = {"x-death-reason": "permanent failure: 400", "x-dead-at": "2026-02-28T09:00:05+00:00"}
    assert read_dead_letter(encode_body(message_id), headers, NOW) == DeadLetter(
        message_id, "permanent failure: 400", datetime(2026, 2, 28, 9, 0, 5, tzinfo=UTC)
    )


def test_reads_what_the_broker_dead_lettered_itself() -> None:
    message_id = uuid.uuid4()
    death_time = datetime(2026, 2, 28, 9, 1, tzinfo=UTC)
    headers = {"x-death": [{"reason": "delivery_limit", "queue": "q", "time": death_time}]}
    assert read_dead_letter(encode_body(message_id), headers, NOW) == DeadLetter(
        message_id, DELIVERY_LIMIT_REASON, death_time
    )
    expired = {"x-death": [{"reason": "expired"}]}
    dead = read_dead_letter(encode_body(message_id), expired, NOW)
    assert dead == DeadLetter(message_id, "expired in the queue", NOW)


def test_a_dead_letter_is_unreadable_without_an_id_in_its_body() -> None:
    assert read_dead_letter(b"garbage", {"x-death": [{"reason": "rejected"}]}, NOW) is None
