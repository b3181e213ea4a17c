"""The pure part of `users import`: header rules, row outcomes, ids, and the domain memo that
must leave email validation exactly as it was, and the plain-row path that must leave every
row's outcome exactly as UserWrite gives it."""

from __future__ import annotations

import importlib
import json
import uuid
from datetime import UTC, date, datetime, time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from birthday_scheduler.errors import FieldProblem
from birthday_scheduler.users import import_rows
from birthday_scheduler.users.schemas import Email

NOW = datetime(2026, 6, 15, 12, tzinfo=UTC)
COLUMNS = ("firstName", "lastName", "email", "dateOfBirth", "timezoneOffset")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ([], "must be a header"),
        (["firstName", "lastName", "email", "dateOfBirth", "tz"], "unknown column 'tz'"),
        (["firstName", "lastName", "email", "email", "timezone", "dateOfBirth"], "more than once"),
        (["firstName", "email", "dateOfBirth", "timezone"], "'lastName'"),
        (["firstName", "lastName", "email", "dateOfBirth"], "timezone or a timezoneOffset"),
    ],
)
def test_a_header_that_cannot_be_imported_says_why(header: list[str], message: str) -> None:
    with pytest.raises(import_rows.HeaderError, match=message):
        import_rows.check_header(header)


def test_a_header_in_any_order_with_spaces_is_accepted() -> None:
    header = [" timezone", "dateOfBirth", "email ", "lastName", "firstName"]
    assert import_rows.check_header(header)[0] == "timezone"


def chunk(*rows: list[str]) -> import_rows.PreparedChunk:
    records = [(line, cells) for line, cells in enumerate(rows, start=2)]
    return import_rows.prepare_chunk(records, COLUMNS, time(9), NOW)


def test_rows_become_users_rejections_or_repeats() -> None:
    prepared = chunk(
        ["Ada", "Lovelace", "ada@example.com", "1990-07-01", "330"],
        ["Ada", "Lovelace", "ADA@example.com", "1990-07-01", "+05:30"],
        ["Ada", "Lovelace", "ada.example.com", "1990-07-01", "0"],
        ["Ada", "Lovelace", "bob@example.com", "1990-07-01", "900"],
        ["Ada", "Lovelace"],
    )
    assert [u.email for u in prepared.users] == ["ada@example.com"]
    assert prepared.users[0].timezone_offset_minutes == 330
    assert prepared.repeated_in_chunk == 1
    assert prepared.rejected_rows == 3
    assert [(r.line, r.field) for r in prepared.rejections] == [
        (4, "email"),
        (5, "timezoneOffset"),
        (6, "row"),
    ]
    assert [(s.kind, s.occasion_date.isoformat()) for s in prepared.schedules] == [
        ("birthday", "2026-07-01")
    ]


def test_an_email_reason_that_quotes_the_address_is_cut() -> None:
    """The email validator may quote the address or a label of it (an IDNA error)."""
    cells = ["Ada", "Lovelace", "ada.l@mail.example.com", "1990-07-01", "0"]
    quoted = "'mail' in ada.l@mail.example.com is bad; ada.l is bad; mail.example.com is bad"
    problem = import_rows._scrubbed(FieldProblem("email", quoted), COLUMNS, cells)
    assert problem.reason == "… in … is bad; … is bad; … is bad"
    other = FieldProblem("dateOfBirth", "must not be in the future")
    assert import_rows._scrubbed(other, COLUMNS, cells) == other


def test_ids_are_version_7_and_later_chunks_sort_after_earlier_ones() -> None:
    first = import_rows.time_ordered_prefix(NOW) | import_rows._random_tail()
    later = import_rows.time_ordered_prefix(NOW.replace(second=1)) | import_rows._random_tail()
    assert uuid.UUID(int=first).version == 7
    assert uuid.UUID(int=first).variant == uuid.RFC_4122
    assert later > first


ADDRESSES = [
    "ada@example.com",
    "Ada.Lovelace+tag@Example.COM",
    "postmaster@example.com",
    "user@bücher.de",
    "user@xn--bcher-kva.de",
    "user@exa_mple.com",
    "user@-example.com",
    "user@example",
    "user@[127.0.0.1]",
    "user@localhost",
    "user@" + "a" * 64 + ".com",
    "user@example.com.",
]


def outcome(address: str) -> str:
    try:
        return "ok " + TypeAdapter(Email).validate_python(address)
    except ValidationError as exc:
        return "error " + exc.errors()[0]["msg"]


def test_the_domain_memo_changes_no_outcome_and_is_undone() -> None:
    module = importlib.import_module("email_validator.validate_email")
    original = module.validate_email_domain_name
    plain = [outcome(a) for a in ADDRESSES]
    with import_rows.memoized_email_domains():
        assert module.validate_email_domain_name is not original
        memoized = [outcome(a) for a in ADDRESSES]
        again = [outcome(a) for a in ADDRESSES]  # answered from the memo this time
    assert module.validate_email_domain_name is original
    assert memoized == plain
    assert again == plain


# --- the plain row: read without pydantic, to exactly UserWrite's outcome ---------------------

SPACES = " \t\x0b\x1c\x1f\x85\xa0\u2007\u200b\u3000"
LOCAL = st.one_of(
    st.from_regex(r"[a-zA-Z0-9+_'-]{1,8}(\.[a-zA-Z0-9_-]{1,8})?", fullmatch=True),
    st.text(alphabet="abcXYZ019.+_-!'", min_size=1, max_size=10),
)
# Each field's cells: mostly what a file of valid rows holds (so most rows are decided by the
# plain path), and the cells where the plain path must step aside for UserWrite.
PLAIN = {
    "firstName": st.one_of(
        st.from_regex(r"[A-Za-zéß'][A-Za-zéß' -]{0,18}[a-zé]", fullmatch=True),
        st.text(alphabet="AdaLovelaceéß' -", min_size=1, max_size=20),
        st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=1, max_size=102),
    ),
    "email": st.builds(
        "{}@{}".format, LOCAL, st.sampled_from(["example.com", "Example.COM", "mail.co.uk"])
    ),
    "dateOfBirth": st.dates(date(1890, 1, 1), date(2030, 12, 31)).map(date.isoformat),
    "timezone": st.sampled_from(["UTC", "Europe/Paris", "Asia/Kolkata", "Etc/GMT+5", "EST5EDT"]),
    "timezoneOffset": st.one_of(
        st.integers(-800, 900).map(str),
        st.builds(
            "{}{:02d}:{:02d}".format, st.sampled_from("+-"), st.integers(0, 15), st.integers(0, 60)
        ),
    ),
    "sendLocalTime": st.builds("{:02d}:{:02d}".format, st.integers(0, 24), st.integers(0, 60)),
    "notifications": st.dictionaries(
        st.sampled_from(["birthday", "anniversary"]), st.booleans(), max_size=2
    ).map(json.dumps),
}
PLAIN["lastName"] = PLAIN["firstName"]
PLAIN["anniversaryDate"] = PLAIN["dateOfBirth"]
ODD = {
    "firstName": st.one_of(
        st.sampled_from([" Ada", "Ada ", "Ada\u3000", "\x1cAda", "A\x85da", "a" * 100, "a" * 101]),
        st.text(alphabet="Adaé" + SPACES + "\x00\x7f\n", max_size=6),
    ),
    "email": st.one_of(
        st.sampled_from([*ADDRESSES, " ada@example.com", "Info@example.com", "ada@EXAMPLE.com"]),
        st.text(alphabet="ab.@-Cé ", max_size=12),
    ),
    "dateOfBirth": st.one_of(
        st.sampled_from(
            [
                "1899-12-31",
                "1900-01-01",
                "2024-02-29",
                "2026-02-29",
                "2026-06-16",
                " 1990-01-01",
                "1990-01-01 ",
                "1990-01-01T10:00",
                "1990-1-01",
                "\u0661\u0669\u0669\u0660-\u0660\u0661-\u0660\u0661",
                "0000-01-01",
            ]
        ),
        st.text(alphabet="0123456789-T:", max_size=12),
    ),
    "timezone": st.one_of(
        st.sampled_from(
            [
                "europe/paris",
                " UTC",
                "UTC ",
                "America/Argentina/Buenos_Aires",
                "Nope/Zone",
                "a" * 65,
                "Europe/../Paris",
            ]
        ),
        st.text(alphabet="UTCEurope/_+- ", max_size=8),
    ),
    "timezoneOffset": st.sampled_from(
        [
            "05:30",
            "+5:30",
            "+05:60",
            "+14:01",
            "-12:00",
            "\u0661\u0662",
            " 1",
            "1.5",
            "true",
            "0330",
            "-0",
            "+0",
            "99999",
        ]
    ),
    "sendLocalTime": st.one_of(
        st.sampled_from(["9:00", "24:00", "09:00 ", "09:00\n", "\u0660\u0669:\u0660\u0660"]),
        st.text(alphabet="0129:", max_size=6),
    ),
    "notifications": st.sampled_from(
        [
            '{"birthday": 1}',
            '{"nope": true}',
            "[]",
            "null",
            "{",
            "true",
            '{"birthday": true, "birthday": "x"}',
        ]
    ),
}
ODD["lastName"] = ODD["firstName"]
ODD["anniversaryDate"] = ODD["dateOfBirth"]
OPTIONAL = ("anniversaryDate", "sendLocalTime", "notifications")


@st.composite
def rows(draw: st.DrawFn) -> tuple[tuple[str, ...], list[str]]:
    zones = draw(st.sampled_from([("timezone",), ("timezoneOffset",)] * 4 + [ZONE_BOTH, ()]))
    optional = [name for name in OPTIONAL if draw(st.booleans())]
    columns = draw(st.permutations([*import_rows.REQUIRED_COLUMNS, *zones, *optional]))
    cells = []
    for name in columns:
        kind = draw(st.integers(0, 15))  # mostly plain; an odd or empty cell now and then
        cells.append("" if kind == 0 else draw(ODD[name] if kind == 1 else PLAIN[name]))
    return tuple(columns), cells


ZONE_BOTH = ("timezone", "timezoneOffset")


@given(rows())
@settings(max_examples=3000, deadline=None)
def test_the_plain_path_gives_what_user_write_gives(row: tuple[tuple[str, ...], list[str]]) -> None:
    """Both ways then go through the same date check, so the row's outcome is the same."""
    columns, cells = row
    plain = import_rows._plain_row(columns, cells)
    if plain is not None:  # decided without pydantic: UserWrite accepts it, with these values
        assert import_rows._read_with_api(columns, cells) == (plain, [])


def test_a_plain_row_takes_the_plain_path() -> None:
    columns = (
        "firstName",
        "lastName",
        "email",
        "dateOfBirth",
        "timezone",
        "anniversaryDate",
        "sendLocalTime",
        "notifications",
    )
    cells = [
        "Ada",
        "Lovelace",
        "Ada@Example.COM",
        "1990-07-01",
        "Europe/Paris",
        "2015-05-02",
        "08:30",
        '{"anniversary": false}',
    ]
    plain = import_rows._plain_row(columns, cells)
    assert plain is not None
    assert (plain, []) == import_rows._read_with_api(columns, cells)
    assert plain.email == "Ada@example.com"
    offset = import_rows._plain_row(COLUMNS, ["Ada", "L", "ada@example.com", "1990-07-01", "330"])
    assert offset is not None
    assert offset.timezone_offset == 330
