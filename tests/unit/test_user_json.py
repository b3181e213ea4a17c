"""The hot routes answer with orjson from plain documents; the bytes must be exactly what
pydantic writes for the documented UserOut model (names, order, instants, dates, nulls)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time

import pytest
from asyncpg.pgproto import pgproto

from birthday_scheduler.api.json import dumps
from birthday_scheduler.users.schemas import NextMessage, UserOut
from birthday_scheduler.users.service import user_document

ID = uuid.UUID("1dd28983-6ed7-431f-84ae-1cde5e1f5f0e")
CREATED = datetime(2026, 12, 2, 10, 14, 39, 120696, tzinfo=UTC)
ON_THE_SECOND = datetime(2027, 5, 17, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("user_id", "zone", "offset", "anniversary", "send_at", "notifications", "planned"),
    [
        (ID, "Europe/Amsterdam", None, None, None, {}, [("birthday", ON_THE_SECOND)]),
        # asyncpg returns its own UUID subclass; no plan at all
        (pgproto.UUID(str(ID)), None, -330, date(2015, 3, 2), time(8, 5), {"birthday": False}, []),
        (
            ID,
            None,
            840,
            date(2001, 2, 28),
            time(23, 59),
            {"anniversary": True},
            [("anniversary", ON_THE_SECOND), ("birthday", CREATED)],
        ),
    ],
)
def test_documents_encode_to_the_bytes_pydantic_writes_for_user_out(
    user_id: uuid.UUID,
    zone: str | None,
    offset: int | None,
    anniversary: date | None,
    send_at: time | None,
    notifications: dict[str, bool],
    planned: list[tuple[str, datetime]],
) -> None:
    row = (
        user_id,
        'Zoë 👩‍💻 <b>&"quotes"',
        "O'Brien\\",
        "zoe@example.com",
        date(1990, 5, 17),
        zone,
        offset,
        anniversary,
        send_at,
        notifications,
        CREATED,
        ON_THE_SECOND,
    )
    model = UserOut(
        id=uuid.UUID(str(user_id)),
        first_name=row[1],
        last_name=row[2],
        email=row[3],
        date_of_birth=row[4],
        timezone=zone,
        timezone_offset=offset,
        anniversary_date=anniversary,
        send_local_time=send_at.strftime("%H:%M") if send_at else None,
        notifications={"birthday": notifications.get("birthday", True)}
        | {"anniversary": notifications.get("anniversary", True)},
        created_at=CREATED,
        updated_at=ON_THE_SECOND,
        next_messages=[NextMessage(kind=kind, at=at) for kind, at in planned],
        next_message_at=planned[0][1] if planned else None,
    )
    assert dumps(user_document(row, planned)) == model.model_dump_json(by_alias=True).encode()
