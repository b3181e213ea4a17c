"""The verdict of a chaos run: the ledger read against what the message service accepted.

Pure: it takes the run's own record of what it made due (`Expectation`), the ledger rows, the
planning table and the simulator's log, and counts; it never asks the service what it thinks.

* lost: a user with a message due in the run and neither an accepted delivery nor a terminal
  reason (`dead` or `skipped` with its error) in the ledger. A user whose birthday the run moved
  to tomorrow is due only if the occasion had started (an attempt counted) before the edit.
* duplicates: a user (and kind) with more than one distinct accepted Idempotency-Key in the
  year. The key is derived from (user, kind, local date), so this counts what the contract
  forbids, a second message for the same birthday; a repeat under the same key after a hang
  is the service's idempotency at work, not a duplicate.
* planned_twice: a user whose message was accepted and who still has a plan for another date
  in the same year (the second message is only days away).
* early: an accepted delivery before its scheduled instant, or before the earliest instant the
  run made due for that user. misplanned: a sent row scheduled at an instant the run never made
  due. unknown: an accepted delivery that no user of the run and no ledger row accounts for.
* late: accepted time minus the row's scheduled instant; the summary reports its p99.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

BIRTHDAY_TEXT = "it's your birthday"
TERMINAL_WITH_REASON = ("dead", "skipped")


@dataclass(frozen=True)
class Expectation:
    email: str
    # Every instant the run made this user's message due at (its wave, and the later wave a
    # zone edit moved it to).
    instants: frozenset[datetime]
    # False when an edit moved the birthday out of the run: then due only if it had started.
    must_send: bool = True


@dataclass(frozen=True)
class LedgerRow:
    key: str
    email: str
    kind: str
    occasion: date
    status: str
    attempts: int
    last_error: str | None
    scheduled_at: datetime


@dataclass(frozen=True)
class Plan:
    email: str
    kind: str
    occasion: date


@dataclass(frozen=True)
class Accepted:
    email: str
    message: str
    key: str | None
    time: datetime


@dataclass(frozen=True)
class Verdict:
    messages: int
    lost: int
    duplicates: int
    early: int
    late_p99_s: float
    late_p50_s: float
    late_max_s: float
    dead: int
    skipped: int
    planned_twice: int
    misplanned: int
    unknown: int
    accepted: int
    # Ledger keys of the lost and the duplicated (ids only: no address, no name), for the report.
    lost_keys: list[str] = field(default_factory=list)
    duplicate_keys: list[list[str]] = field(default_factory=list)
    # The latest accepted deliveries: (seconds late, ledger key), latest first.
    latest: list[tuple[float, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicates or self.early or self.planned_twice
            or self.misplanned or self.unknown
        )  # fmt: skip


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def judge(
    expectations: Sequence[Expectation],
    ledger: Iterable[LedgerRow],
    plans: Iterable[Plan],
    deliveries: Iterable[Accepted],
) -> Verdict:
    rows_by_key: dict[str, LedgerRow] = {}
    rows_by_email: dict[str, list[LedgerRow]] = defaultdict(list)
    for row in ledger:
        if row.kind == "birthday":
            rows_by_key[row.key] = row
            rows_by_email[row.email].append(row)
    plans_by_email: dict[str, list[Plan]] = defaultdict(list)
    for plan in plans:
        if plan.kind == "birthday":
            plans_by_email[plan.email].append(plan)
    first_by_key: dict[str | None, Accepted] = {}
    for delivery in sorted(deliveries, key=lambda d: d.time):
        first_by_key.setdefault(delivery.key, delivery)
    accepted_by_email: dict[str, list[Accepted]] = defaultdict(list)
    for delivery in first_by_key.values():
        accepted_by_email[delivery.email].append(delivery)

    expected = {e.email: e for e in expectations}
    lost = duplicates = early = dead = skipped = planned_twice = misplanned = unknown = 0
    lost_keys: list[str] = []
    duplicate_keys: list[list[str]] = []
    late: list[float] = []
    late_keys: list[tuple[float, str]] = []

    for email, accepted in accepted_by_email.items():
        expectation = expected.get(email)
        for delivery in accepted:
            found = rows_by_key.get(delivery.key or "")
            if expectation is None or found is None or found.email != email:
                unknown += 1
                continue
            if BIRTHDAY_TEXT not in delivery.message:
                unknown += 1
                continue
            if delivery.time < found.scheduled_at or delivery.time < min(expectation.instants):
                early += 1
            late.append((delivery.time - found.scheduled_at).total_seconds())
            late_keys.append((late[-1], found.key))

    for expectation in expectations:
        rows = rows_by_email.get(expectation.email, [])
        accepted = [
            d
            for d in accepted_by_email.get(expectation.email, [])
            if d.key in rows_by_key and BIRTHDAY_TEXT in d.message
        ]
        by_year: dict[int, list[str]] = defaultdict(list)
        for delivery in accepted:
            by_year[rows_by_key[delivery.key or ""].occasion.year].append(delivery.key or "")
        for keys in by_year.values():
            if len(keys) > 1:
                duplicates += 1
                duplicate_keys.append(sorted(keys))
        sent_dates = {rows_by_key[d.key or ""].occasion for d in accepted}
        for plan in plans_by_email.get(expectation.email, []):
            if any(plan.occasion.year == s.year and plan.occasion != s for s in sent_dates):
                planned_twice += 1
        for row in rows:
            if row.status == "sent" and row.scheduled_at not in expectation.instants:
                misplanned += 1
        started = any(row.attempts >= 1 for row in rows)
        if accepted or not (expectation.must_send or started):
            continue
        finished = [r for r in rows if r.status in TERMINAL_WITH_REASON and r.last_error]
        if finished:
            if finished[0].status == "dead":
                dead += 1
            else:
                skipped += 1
            continue
        lost += 1
        lost_keys.extend(row.key for row in rows)

    return Verdict(
        messages=len(expectations),
        lost=lost,
        duplicates=duplicates,
        early=early,
        late_p99_s=percentile(late, 0.99),
        late_p50_s=percentile(late, 0.50),
        late_max_s=max(late, default=0.0),
        dead=dead,
        skipped=skipped,
        planned_twice=planned_twice,
        misplanned=misplanned,
        unknown=unknown,
        accepted=len(late),
        lost_keys=lost_keys,
        duplicate_keys=duplicate_keys,
        latest=sorted(late_keys, reverse=True)[:3],
    )


def summary_line(verdict: Verdict, faults: int) -> str:
    return (
        f"chaos: messages={verdict.messages} faults={faults} lost={verdict.lost} "
        f"duplicates={verdict.duplicates} late_p99_s={verdict.late_p99_s:.1f}"
    )
