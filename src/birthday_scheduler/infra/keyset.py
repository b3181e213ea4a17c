"""Opaque cursors for keyset pagination on (UTC instant, id), shared by every paged list.

A cursor is the position of the last row a page showed, so a page never skips or repeats a row
when rows are added or removed between requests. It is opaque to clients but not secret.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime, timedelta

from birthday_scheduler.errors import FieldProblem, ValidationProblem

Position = tuple[datetime, uuid.UUID]


def encode(instant: datetime, row_id: uuid.UUID) -> str:
    raw = f"{instant.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> Position:
    """The position `encode` wrote, or a 400 naming `cursor` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        text, row_id = raw.split("|")
        instant = datetime.fromisoformat(text)
        # Cursors carry a UTC instant this service wrote. Anything else (another offset, a year
        # no row can have been written in) is forged, and would overflow the driver's
        # conversion to UTC: a 400, never a 500.
        if instant.utcoffset() != timedelta(0) or not 1970 <= instant.year < 9000:
            raise ValueError("not a cursor of ours")
        return instant, uuid.UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationProblem(
            [FieldProblem("cursor", "is not a cursor this API returned")]
        ) from None
