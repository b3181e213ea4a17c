"""plan_due: the pure part of a scheduler tick (what a due schedule turns into)."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, date, datetime, time, timedelta

import pytest

from birthday_scheduler.messages import kinds
from birthday_scheduler.messages.kinds import Recipient
from birthday_scheduler.messages.models import MessageStatus
from birthday_scheduler.messages.planning import PlanningPolicy, ledger_id, plan_due
from birthday_scheduler.messages.schedules import DueSchedule, ScheduleAdvance

POLICY = PlanningPolicy(
    send_time=time(9, 0),
    catch_up_window=timedelta(hours=72),
    queue_lease=timedelta(seconds=300),
    publish_grace=timedelta(seconds=30),
)


def due(
    *,
    born: date = date(1990, 7, 1),
    occasion: date = date(2026, 7, 1),
    fire: datetime = datetime(2026, 7, 1, 9, 0, tzinfo=UTC),
    kind: str = "birthday",
    timezone: str | None = None,
    offset: int | None = 0,
    user_id: uuid.UUID | None = None,
    anniversary: date | None = None,
    send_time: time | None = None,
) -> DueSchedule:
    return DueSchedule(
        user_id=user_id or uuid.uuid4(),
        kind=kind,
        next_fire_at=fire,
        occasion_date=occasion,
        date_of_birth=born,
        timezone=timezone,
        timezone_offset_minutes=offset,
        anniversary_date=anniversary,
        send_local_time=send_time,
    )


def test_on_time_schedule_becomes_a_queued_row_and_advances_a_year() -> None:
    schedule = due()
    now = datetime(2026, 7, 1, 9, 0, 2, tzinfo=UTC)

    plan = plan_due([schedule], POLICY, now)

    [row] = plan.rows
    # Written `queued`: the scheduler publishes right after the commit, with no second write.
    assert row.status == MessageStatus.QUEUED
    assert row.id == ledger_id(schedule.user_id, "birthday", date(2026, 7, 1))
    assert (row.user_id, row.kind, row.occasion_date) == (
        schedule.user_id,
        "birthday",
        date(2026, 7, 1),
    )
    assert row.scheduled_at == schedule.next_fire_at  # the planned instant, not the tick's
    # The queue holds it for a whole lease before the sweep presumes it lost and re-publishes.
    assert row.lease_until == now + POLICY.queue_lease
    assert plan.advances == [
        ScheduleAdvance(
            schedule.user_id, "birthday", datetime(2027, 7, 1, 9, 0, tzinfo=UTC), date(2027, 7, 1)
        )
    ]
    assert plan.dropped == []


@pytest.mark.parametrize(
    ("late_by", "status"),
    [
        (timedelta(hours=71, minutes=59), MessageStatus.QUEUED),
        (timedelta(hours=72), MessageStatus.QUEUED),  # the window is inclusive
        (timedelta(hours=72, seconds=1), MessageStatus.SKIPPED),
        (timedelta(days=200), MessageStatus.SKIPPED),
    ],
)
def test_catch_up_window_decides_queued_or_skipped(
    late_by: timedelta, status: MessageStatus
) -> None:
    schedule = due()
    plan = plan_due([schedule], POLICY, schedule.next_fire_at + late_by)

    [row] = plan.rows
    assert row.status == status
    # A skipped row is finished: nothing holds it, so the sweep must never pick it up.
    assert (row.lease_until is None) == (status == MessageStatus.SKIPPED)
    # Late or not, the schedule moves on to next year's occurrence.
    assert [a.occasion_date for a in plan.advances] == [date(2027, 7, 1)]


def test_zero_window_skips_anything_late() -> None:
    policy = dataclasses.replace(POLICY, catch_up_window=timedelta(0))
    schedule = due()
    assert plan_due([schedule], policy, schedule.next_fire_at).rows[0].status == "queued"
    late = plan_due([schedule], policy, schedule.next_fire_at + timedelta(microseconds=1))
    assert late.rows[0].status == MessageStatus.SKIPPED


@pytest.mark.parametrize(
    ("occasion", "fire", "next_date"),
    [
        # Leap year's 29th -> the common year's 28th.
        (date(2028, 2, 29), datetime(2028, 2, 29, 9, tzinfo=UTC), date(2029, 2, 28)),
        # A common year's stand-in -> back to the 29th when the next year has one.
        (date(2027, 2, 28), datetime(2027, 2, 28, 9, tzinfo=UTC), date(2028, 2, 29)),
        (date(2025, 2, 28), datetime(2025, 2, 28, 9, tzinfo=UTC), date(2026, 2, 28)),
    ],
)
def test_leap_day_birthdays_fall_on_28_february_in_common_years(
    occasion: date, fire: datetime, next_date: date
) -> None:
    schedule = due(born=date(2000, 2, 29), occasion=occasion, fire=fire)
    plan = plan_due([schedule], POLICY, fire)

    assert plan.rows[0].occasion_date == occasion
    [advance] = plan.advances
    assert advance.occasion_date == next_date
    assert advance.next_fire_at == datetime.combine(next_date, time(9), tzinfo=UTC)


def test_next_year_is_computed_in_the_users_zone_with_its_own_dst() -> None:
    # 09:00 in New York is 13:00Z in summer (EDT) and 14:00Z in winter (EST); the next year's
    # instant is recomputed, not the old instant plus 365 days.
    summer = due(
        born=date(1985, 7, 4),
        occasion=date(2026, 7, 4),
        fire=datetime(2026, 7, 4, 13, tzinfo=UTC),
        timezone="America/New_York",
        offset=None,
    )
    winter = due(
        born=date(1985, 1, 15),
        occasion=date(2026, 1, 15),
        fire=datetime(2026, 1, 15, 14, tzinfo=UTC),
        timezone="America/New_York",
        offset=None,
    )
    plan = plan_due([summer, winter], POLICY, datetime(2026, 7, 4, 13, 0, 1, tzinfo=UTC))

    fires = {a.user_id: a.next_fire_at for a in plan.advances}
    assert fires[summer.user_id] == datetime(2027, 7, 4, 13, tzinfo=UTC)
    assert fires[winter.user_id] == datetime(2027, 1, 15, 14, tzinfo=UTC)
    # The winter one is long past the window when planned in July: recorded, not sent.
    statuses = {r.user_id: r.status for r in plan.rows}
    assert statuses == {summer.user_id: "queued", winter.user_id: "skipped"}


def test_fixed_offset_east_of_utc_fires_the_evening_before_in_utc() -> None:
    schedule = due(
        occasion=date(2026, 7, 1), fire=datetime(2026, 6, 30, 19, tzinfo=UTC), offset=14 * 60
    )
    [advance] = plan_due([schedule], POLICY, schedule.next_fire_at).advances
    assert advance == ScheduleAdvance(
        schedule.user_id, "birthday", datetime(2027, 6, 30, 19, tzinfo=UTC), date(2027, 7, 1)
    )


def test_ledger_ids_are_stable_per_occasion() -> None:
    user = uuid.uuid4()
    first = plan_due([due(user_id=user)], POLICY, datetime(2026, 7, 1, 9, tzinfo=UTC))
    again = plan_due([due(user_id=user)], POLICY, datetime(2026, 7, 1, 10, tzinfo=UTC))
    assert first.rows[0].id == again.rows[0].id  # any replica, any tick: one key per occasion
    next_year = due(
        user_id=user, occasion=date(2027, 7, 1), fire=datetime(2027, 7, 1, 9, tzinfo=UTC)
    )
    later = plan_due([next_year], POLICY, datetime(2027, 7, 1, 9, tzinfo=UTC))
    assert later.rows[0].id != first.rows[0].id
    other_kind = ledger_id(user, "anniversary", date(2026, 7, 1))
    assert other_kind != first.rows[0].id


def test_schedule_of_an_unknown_kind_is_dropped_not_planned() -> None:
    retired = due(kind="retired-kind")
    kept = due()
    plan = plan_due([retired, kept], POLICY, kept.next_fire_at)

    assert plan.dropped == [(retired.user_id, "retired-kind")]
    assert [r.user_id for r in plan.rows] == [kept.user_id]
    assert [a.user_id for a in plan.advances] == [kept.user_id]


def test_nothing_due_plans_nothing() -> None:
    plan = plan_due([], POLICY, datetime(2026, 7, 1, tzinfo=UTC))
    assert (plan.rows, plan.advances, plan.dropped) == ([], [], [])


# --- a second kind is a definition, not a scheduler change -------------------------------------

WEDDING = date(2015, 9, 12)


def test_an_anniversary_plans_alongside_birthdays_from_its_own_date() -> None:
    user = uuid.uuid4()
    birthday = due(user_id=user, anniversary=WEDDING)
    anniversary = due(
        user_id=user,
        kind="anniversary",
        occasion=date(2026, 9, 12),
        fire=datetime(2026, 9, 12, 9, tzinfo=UTC),
        anniversary=WEDDING,
    )
    plan = plan_due([birthday, anniversary], POLICY, datetime(2026, 9, 12, 9, 0, 1, tzinfo=UTC))

    rows = {r.kind: r for r in plan.rows}
    assert set(rows) == {"birthday", "anniversary"}
    assert rows["anniversary"].status == MessageStatus.QUEUED
    assert rows["birthday"].status == MessageStatus.SKIPPED  # July is long past in September
    assert rows["anniversary"].id == ledger_id(user, "anniversary", date(2026, 9, 12))
    assert rows["anniversary"].id != rows["birthday"].id
    advances = {a.kind: a for a in plan.advances}
    # Advanced from the kind's own anchor, not from the birth date.
    assert advances["anniversary"] == ScheduleAdvance(
        user, "anniversary", datetime(2027, 9, 12, 9, tzinfo=UTC), date(2027, 9, 12)
    )
    assert advances["birthday"].occasion_date == date(2027, 7, 1)
    assert plan.dropped == []


def test_a_users_own_send_time_moves_next_years_instant() -> None:
    schedule = due(send_time=time(7, 30), fire=datetime(2026, 7, 1, 7, 30, tzinfo=UTC))
    plan = plan_due([schedule], POLICY, datetime(2026, 7, 1, 7, 30, 1, tzinfo=UTC))
    assert plan.advances[0].next_fire_at == datetime(2027, 7, 1, 7, 30, tzinfo=UTC)


def test_a_kind_the_user_has_no_occasion_for_is_dropped() -> None:
    single = due(kind="anniversary", occasion=date(2026, 9, 12), anniversary=None)
    plan = plan_due([single], POLICY, datetime(2026, 9, 12, 9, tzinfo=UTC))
    assert plan.dropped == [(single.user_id, "anniversary")]
    assert plan.rows == []
    assert plan.dead == []  # no anniversary is not a failure


def test_each_kind_has_its_text_and_a_template_overrides_it() -> None:
    ada = Recipient("Ada", "Lovelace", "ada@example.com")
    assert kinds.DEFAULT_TEXTS.render("birthday", ada) == "Hey, Ada Lovelace it's your birthday"
    assert kinds.DEFAULT_TEXTS.render("anniversary", ada) == "Hey, Ada Lovelace happy anniversary"
    custom = kinds.Texts({"anniversary": "Congratulations, {firstName}!"})
    assert custom.render("anniversary", ada) == "Congratulations, Ada!"
    assert custom.render("birthday", ada) == "Hey, Ada Lovelace it's your birthday"
    with pytest.raises(LookupError):
        custom.render("retired_kind", ada)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("Hi {email}", "unknown placeholder {email}"),
        ("Hi {firstName.__class__}", "unknown placeholder"),
        ("Hi {firstName", "is not a valid template"),
    ],
)
def test_a_template_with_an_unknown_placeholder_is_refused(template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        kinds.check_template(template)
