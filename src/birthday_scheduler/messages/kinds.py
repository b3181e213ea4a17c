"""Message kinds. A new kind (an anniversary, say) is a new definition here, not a new scheduler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, tzinfo
from typing import NamedTuple


class PlanningFacts(NamedTuple):
    """What planning knows of a user: the dates occasions recur on and the zone.

    A named tuple: a due wave builds one per message, and a tuple is the cheapest to build."""

    date_of_birth: date
    zone: tzinfo


@dataclass(frozen=True)
class Recipient:
    first_name: str
    last_name: str
    email: str


@dataclass(frozen=True)
class MessageKind:
    name: str
    # The date the occasion recurs on every year, or None when the user has no such occasion.
    anchor: Callable[[PlanningFacts], date | None]
    render: Callable[[Recipient], str]


BIRTHDAY = MessageKind(
    name="birthday",
    anchor=lambda facts: facts.date_of_birth,
    render=lambda r: f"Hey, {r.first_name} {r.last_name} it's your birthday",
)

KINDS: dict[str, MessageKind] = {kind.name: kind for kind in (BIRTHDAY,)}


def kind_named(name: str) -> MessageKind:
    try:
        return KINDS[name]
    except KeyError:
        raise LookupError(f"unknown message kind {name!r}") from None
