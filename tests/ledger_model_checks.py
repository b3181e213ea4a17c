"""The model's users and what must hold of them (tests/integration/test_ledger_model.py).

A `ModelUser` is what the API was told about one user: the current planning facts and every
set of facts the user had (a row is checked against those), the kinds turned on, when each
kind was last (re-)planned, and which kinds the last step's edit moved. The checks compare it
with what the message service accepted, the ledger rows and GET /users, per (user, kind):

  * at most one accepted Idempotency-Key per (user, kind, year); nothing accepted before the
    row's scheduled instant nor after its catch-up window; no acceptance of a kind that is
    off (or of a deleted user) unless its row had started before it was turned off;
  * every row's scheduled instant is its kind's date at the send time (or 09:00) in the zone,
    as the user had them together at one time (timemath), never in the date's own year;
  * a row is planned (written, or a cancelled one revived) only while its kind is on and has
    a date; a row is cancelled only by an edit that moved its kind or a delete, and never
    after an attempt was made;
  * nextMessages has exactly one entry per kind that is on and has a date, sorted by time,
    at the kind's next open occasion (not a year sent or started, not skipping an occasion
    that was open when the kind was last planned); nextMessageAt is the first of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from ledger_model_support import MODEL_KINDS, WINDOW, Accepted, Facts, Row


@dataclass
class ModelUser:
    id: str
    email: str
    facts: Facts
    enabled: frozenset[str]  # the kinds turned on
    history: list[Facts]
    planned_at: dict[str, datetime]  # per kind: the create or last re-plan
    deleted: bool = False
    next_messages: list[tuple[str, datetime]] = field(default_factory=list)
    next_message_at: datetime | None = None
    rows: dict[str, Row] = field(default_factory=dict)
    # Keys whose occasion had started when its kind was turned off (or the user deleted):
    # those may still go out, under their own key.
    started_when_off: set[str] = field(default_factory=set)
    # Kinds the last step re-planned: only their unstarted rows may have been cancelled.
    moved: set[str] = field(default_factory=set)

    @classmethod
    def created(
        cls, user_id: str, email: str, facts: Facts, enabled: frozenset[str], now: datetime
    ) -> ModelUser:
        planned = dict.fromkeys(MODEL_KINDS, now)
        return cls(user_id, email, facts, enabled, [facts], planned)

    def change(self, facts: Facts, enabled: frozenset[str], now: datetime) -> None:
        """An accepted PUT or PATCH. It re-plans the kinds it moves (README, "An edit re-plans
        only the kinds it moves"): a new zone or send time every kind, a new date its kind,
        and a kind turned on or off."""
        before = self.facts
        if (before.zone_name, before.offset, before.send_time) != (
            facts.zone_name,
            facts.offset,
            facts.send_time,
        ):
            moved = set(MODEL_KINDS)
        else:
            moved = {kind for kind in MODEL_KINDS if before.anchor(kind) != facts.anchor(kind)}
        moved |= self.enabled ^ enabled
        for kind in self.enabled - enabled:
            self.started_when_off |= self._started_keys(kind)
        if facts != before:
            self.facts = facts
            self.history.append(facts)
        self.enabled = enabled
        for kind in moved:
            self.planned_at[kind] = now
        self.moved |= moved

    def delete(self) -> None:
        for kind in MODEL_KINDS:
            self.started_when_off |= self._started_keys(kind)
        self.deleted = True
        self.moved |= set(MODEL_KINDS)

    def show(self, item: dict[str, Any]) -> None:
        """The user as GET /users shows it: the facts the model holds, and its next messages."""
        facts = self.facts
        shown = (item["anniversaryDate"], item["sendLocalTime"], item["notifications"])
        assert shown == (
            facts.anniversary and facts.anniversary.isoformat(),
            facts.send_time and facts.send_time.strftime("%H:%M"),
            {kind: kind in self.enabled for kind in MODEL_KINDS},
        ), f"GET /users shows {shown}; the model: {self.describe()}"
        self.next_messages = [
            (entry["kind"], datetime.fromisoformat(entry["at"])) for entry in item["nextMessages"]
        ]
        at = item["nextMessageAt"]
        self.next_message_at = None if at is None else datetime.fromisoformat(at)

    def absorb(self, rows: dict[str, Row]) -> None:
        """The rows as just read; a row gone was purged (the model remembers what it was).
        Rows the step planned or cancelled are checked against what it did."""
        for key, row in self.rows.items():
            if key not in rows:
                row.purged = True
                rows[key] = row
        check_transitions(self, self.rows, rows)
        self.rows = rows

    def unfinished(self) -> list[Row]:
        active = ("pending", "queued", "sending", "failed")
        return [r for r in self.rows.values() if r.status in active and not r.purged]

    def _started_keys(self, kind: str) -> set[str]:
        return {key for key, row in self.rows.items() if row.kind == kind and row.started}

    def describe(self) -> str:
        facts = self.facts
        return (
            f"birthday {facts.birthday}, anniversary {facts.anniversary}, zone "
            f"{facts.zone_name or facts.offset}, send time {facts.send_time or '09:00'}, "
            f"on {sorted(self.enabled)}"
        )


def refused(facts: Facts, now: datetime, response: httpx.Response) -> bool:
    """Whether a request was refused, as it must be, for an anniversary in the future (past
    today in UTC+14, the earliest calendar on Earth)."""
    if facts.anniversary is None or facts.anniversary <= (now + timedelta(hours=14)).date():
        return False
    assert response.status_code == 400, response.text
    assert "anniversaryDate" in response.text, response.text
    return True


def check_accepted(
    users: dict[str, ModelUser], rows: dict[str, Row], accepted: list[Accepted], new_from: int
) -> None:
    """What the service accepted; `new_from` is the first acceptance of the last step."""
    keys_by_year: dict[tuple[str, str, int], set[str]] = {}
    for n, message in enumerate(accepted):
        row = rows.get(message.key)
        assert row is not None, f"the service accepted key {message.key} the ledger never had"
        user = users[row.user]
        assert message.email == user.email, "a message went to another user's address"
        keys_by_year.setdefault((row.user, row.kind, row.occasion.year), set()).add(message.key)
        assert message.at >= row.scheduled_at, (
            f"accepted at {message.at}, before its instant {row.scheduled_at}"
        )
        assert message.at <= row.scheduled_at + WINDOW, (
            f"accepted at {message.at}, {message.at - row.scheduled_at} after its instant "
            f"{row.scheduled_at}: later than the catch-up window"
        )
        if n >= new_from and (user.deleted or row.kind not in user.enabled):
            assert message.key in user.started_when_off, (
                f"a {row.kind} message for {row.occasion} went out while "
                f"{'the user was deleted' if user.deleted else 'that kind was off'}, though "
                "no attempt had been made on it before"
            )
    for (user_id, kind, year), keys in keys_by_year.items():
        assert len(keys) <= 1, (
            f"user {user_id} got {len(keys)} {kind} messages for {year} under "
            f"different keys: {sorted(keys)}"
        )


def check_rows(user: ModelUser) -> None:
    for row in user.rows.values():
        instants = {facts.instant_of(row.kind, row.occasion) for facts in user.history}
        assert row.scheduled_at in instants, (
            f"{row.kind} row {row.key} for {row.occasion} is scheduled at {row.scheduled_at}, "
            f"which no date, zone and send time the user had gives ({instants}); now: "
            f"{user.describe()}"
        )
        assert not (row.status == "cancelled" and row.attempts > 0), (
            f"{row.kind} row {row.key} ({row.occasion}) had {row.attempts} attempt(s) and was "
            "cancelled by an edit: a started occasion must finish under its own key"
        )


def check_transitions(user: ModelUser, before: dict[str, Row], after: dict[str, Row]) -> None:
    """Rows the last step planned or cancelled: planned only for a live user's kind that is
    on and has a date; cancelled only when the step moved that kind, or the user is deleted."""
    for key, row in after.items():
        was = before.get(key)
        if was is None or (was.status == "cancelled" and row.status != "cancelled"):
            assert not user.deleted, f"a {row.kind} row for {row.occasion} of a deleted user"
            assert row.kind in user.enabled, (
                f"a {row.kind} row for {row.occasion} was planned while {row.kind} was off"
            )
            assert user.facts.anchor(row.kind) is not None, (
                f"a {row.kind} row for {row.occasion} was planned for a user with no such date"
            )
        elif was.status != "cancelled" and row.status == "cancelled":
            # A deleted user's started message is cancelled when it reaches a worker: nothing
            # goes out to a deleted user, whenever its message comes through.
            assert user.deleted or row.kind in user.moved, (
                f"the {row.kind} row for {row.occasion} ({was.status}) was cancelled by an "
                f"edit that moved only {sorted(user.moved) or 'nothing'} ({user.describe()})"
            )


def check_next_messages(user: ModelUser, accepted_keys: set[str]) -> None:
    expected = {kind for kind in user.enabled if user.facts.anchor(kind) is not None}
    kinds = [kind for kind, _ in user.next_messages]
    assert sorted(kinds) == sorted(expected), (
        f"nextMessages has {kinds}, not one entry for each of {sorted(expected)} "
        f"({user.describe()})"
    )
    instants = [at for _, at in user.next_messages]
    assert instants == sorted(instants), f"nextMessages is not sorted: {user.next_messages}"
    assert user.next_message_at == (instants[0] if instants else None), (
        f"nextMessageAt {user.next_message_at} is not the first of {user.next_messages}"
    )
    for kind, at in user.next_messages:
        _check_next(user, kind, at, accepted_keys)


def _check_next(user: ModelUser, kind: str, at: datetime, accepted_keys: set[str]) -> None:
    facts = user.facts
    years = [
        year
        for year in range(at.year - 1, at.year + 2)
        if (occurrence := facts.occurrence(kind, year)) and occurrence.instant == at
    ]
    assert years, (
        f"the next {kind} message at {at} is no occasion of the user's {kind} at the send "
        f"time in the zone, after its own year ({user.describe()})"
    )
    year = years[0]
    rows = [row for row in user.rows.values() if row.kind == kind]
    blocked = {r.occasion.year for r in rows if r.blocks_its_year or r.key in accepted_keys}
    assert year not in blocked, (
        f"the next {kind} message at {at} plans {year} again, though that year's message was "
        f"sent or started: {[(r.occasion, r.status, r.attempts) for r in rows]}"
    )
    used = blocked | {r.occasion.year for r in rows if r.used_its_year}
    before = facts.occurrence(kind, year - 1)
    assert before is None or before.instant < user.planned_at[kind] or year - 1 in used, (
        f"the next {kind} message at {at} skips the open occasion {before.local_date} "
        f"({before.instant}, planned at {user.planned_at[kind]})"
    )


def check_settled(user: ModelUser, now: datetime, accepted_keys: set[str]) -> None:
    """After the faults stopped and everything ran to quiescence."""
    left = [(r.kind, r.occasion, r.status) for r in user.unfinished()]
    assert not left, f"never finished: {left}"
    for row in user.rows.values():
        _check_final(row, accepted_keys)
    late = [(kind, at) for kind, at in user.next_messages if at <= now]
    assert not late, f"next messages {late} were due but never planned (now {now})"


def _check_final(row: Row, accepted_keys: set[str]) -> None:
    if row.status in ("dead", "skipped"):
        assert row.last_error, f"row {row.key} ({row.occasion}) is {row.status} with no reason"
    if row.status == "skipped" and not row.purged:
        assert row.updated_at - row.scheduled_at > WINDOW, (
            f"{row.kind} row {row.key} ({row.occasion}, due {row.scheduled_at}) was skipped at "
            f"{row.updated_at}, inside the catch-up window"
        )
    if row.status == "sent":
        assert row.key in accepted_keys, f"row {row.key} is sent but the service never accepted it"
