"""The chaos run's checker counts what it names: lost, duplicated, early, late, planned twice.

A checker that reports zero whatever happened would make `make chaos` worthless, so each count
is shown moving on a small ledger and delivery log written by hand.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

# chaos/ is a top-level package beside tests/, like bench/, not an installed one.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chaos.check import Accepted, Expectation, LedgerRow, Plan, judge, percentile, summary_line

AT = datetime(2026, 12, 2, 7, 16, tzinfo=UTC)
LATER = AT + timedelta(minutes=1)
DAY = date(2026, 12, 2)
TEXT = "Hey, Ada Lovelace it's your birthday"


def row(n: int, key: str = "", **overrides: object) -> LedgerRow:
    values: dict[str, object] = {
        "key": key or f"k{n}",
        "email": f"u{n}@example.com",
        "kind": "birthday",
        "occasion": DAY,
        "status": "sent",
        "attempts": 1,
        "last_error": None,
        "scheduled_at": AT,
    }
    values.update(overrides)
    return LedgerRow(**values)  # type: ignore[arg-type]


def sent(n: int, after_s: float = 1.0, key: str = "") -> Accepted:
    return Accepted(f"u{n}@example.com", TEXT, key or f"k{n}", AT + timedelta(seconds=after_s))


def expect(n: int, *instants: datetime, must_send: bool = True) -> Expectation:
    return Expectation(f"u{n}@example.com", frozenset(instants or (AT,)), must_send)


def test_a_clean_run_counts_nothing_and_reports_lateness() -> None:
    verdict = judge(
        [expect(1), expect(2)],
        [row(1), row(2)],
        [Plan("u1@example.com", "birthday", date(2027, 12, 2))],
        [sent(1, 2.0), sent(2, 4.0)],
    )

    assert verdict.ok
    assert (verdict.messages, verdict.accepted, verdict.lost, verdict.duplicates) == (2, 2, 0, 0)
    assert verdict.late_p99_s == 4.0
    assert verdict.latest == [(4.0, "k2"), (2.0, "k1")]
    assert summary_line(verdict, faults=7) == (
        "chaos: messages=2 faults=7 lost=0 duplicates=0 late_p99_s=4.0"
    )


def test_a_repeat_under_the_same_key_is_not_a_duplicate_but_a_second_key_is() -> None:
    same_key = judge([expect(1)], [row(1)], [], [sent(1, 1.0), sent(1, 3.0)])
    assert same_key.duplicates == 0
    assert same_key.late_p99_s == 1.0  # the first acceptance counts

    second = row(1, key="k1-moved", occasion=date(2026, 12, 3), scheduled_at=LATER)
    two_keys = judge(
        [expect(1, AT, LATER)], [row(1), second], [], [sent(1), sent(1, 70.0, key="k1-moved")]
    )
    assert two_keys.duplicates == 1
    assert two_keys.duplicate_keys == [["k1", "k1-moved"]]
    assert not two_keys.ok


def test_nothing_accepted_is_lost_unless_the_ledger_gives_a_terminal_reason() -> None:
    verdict = judge(
        [expect(1), expect(2), expect(3), expect(4)],
        [
            row(1, status="queued"),
            row(2, status="dead", last_error="400 from the message service"),
            row(3, status="skipped", last_error="later than the catch-up window"),
            row(4, status="dead", last_error=None),
        ],
        [],
        [],
    )

    assert (verdict.lost, verdict.dead, verdict.skipped) == (2, 1, 1)
    assert sorted(verdict.lost_keys) == ["k1", "k4"]


def test_a_birthday_moved_away_is_due_only_if_its_occasion_had_started() -> None:
    unstarted = row(1, status="cancelled", attempts=0)
    started = row(2, status="cancelled", attempts=1)  # an attempt made, then cancelled: lost
    verdict = judge(
        [expect(1, must_send=False), expect(2, must_send=False)], [unstarted, started], [], []
    )

    assert verdict.lost == 1
    assert verdict.lost_keys == ["k2"]


def test_early_misplanned_unknown_and_planned_twice_are_counted() -> None:
    verdict = judge(
        [expect(1), expect(2), expect(3)],
        [row(1), row(2, scheduled_at=AT + timedelta(hours=1)), row(3)],
        [Plan("u3@example.com", "birthday", date(2026, 12, 9))],
        [
            sent(1, -0.5),  # before its instant
            sent(2, 3600.0 + 1),  # on time for a row scheduled where the run put nothing
            sent(3),
            Accepted("stranger@example.com", TEXT, "k9", AT),
        ],
    )

    assert (verdict.early, verdict.misplanned, verdict.unknown) == (1, 1, 1)
    assert verdict.planned_twice == 1  # u3 was sent and has another date planned this year
    assert not verdict.ok


@pytest.mark.parametrize(
    ("values", "share", "expected"),
    [([], 0.99, 0.0), ([3.0], 0.99, 3.0), ([float(i) for i in range(1, 101)], 0.99, 99.0)],
)
def test_percentile_is_nearest_rank(values: list[float], share: float, expected: float) -> None:
    assert percentile(values, share) == expected
