"""Message kinds. A kind is a definition here (which date it recurs on, its default text), not a
code path: the scheduler, the sweep and the worker handle every kind alike."""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, time, tzinfo
from typing import NamedTuple


class PlanningFacts(NamedTuple):
    """What planning knows of a user: the dates occasions recur on, the zone, the send time.

    A named tuple: a due wave builds one per message, and a tuple is the cheapest to build."""

    date_of_birth: date
    zone: tzinfo
    anniversary_date: date | None = None
    # The user's own wall-clock send time; None means SEND_LOCAL_TIME.
    send_time: time | None = None


@dataclass(frozen=True)
class Recipient:
    first_name: str
    last_name: str
    email: str


# Placeholders a message text may use, and the recipient field each one reads.
PLACEHOLDERS: Mapping[str, Callable[[Recipient], str]] = {
    "firstName": lambda r: r.first_name,
    "lastName": lambda r: r.last_name,
}


@dataclass(frozen=True)
class MessageKind:
    name: str
    # The date the occasion recurs on every year, or None when the user has no such occasion.
    anchor: Callable[[PlanningFacts], date | None]
    # The text sent, with {firstName} and {lastName}; MESSAGE_TEMPLATE_<NAME> overrides it.
    default_template: str
    # The user fields (the model's column names) the anchor reads: a change to one of them
    # re-plans this kind. The zone and the send time re-plan every kind.
    reads: frozenset[str]


BIRTHDAY = MessageKind(
    name="birthday",
    anchor=lambda facts: facts.date_of_birth,
    default_template="Hey, {firstName} {lastName} it's your birthday",
    reads=frozenset({"date_of_birth"}),
)
ANNIVERSARY = MessageKind(
    name="anniversary",
    anchor=lambda facts: facts.anniversary_date,
    default_template="Hey, {firstName} {lastName} happy anniversary",
    reads=frozenset({"anniversary_date"}),
)

KINDS: dict[str, MessageKind] = {kind.name: kind for kind in (BIRTHDAY, ANNIVERSARY)}


def kind_named(name: str) -> MessageKind:
    try:
        return KINDS[name]
    except KeyError:
        raise LookupError(f"unknown message kind {name!r}") from None


def check_template(template: str) -> str:
    """The template if it uses only known placeholders; ValueError naming the culprit if not."""
    try:
        fields = [
            field for _, field, _, _ in string.Formatter().parse(template) if field is not None
        ]
    except ValueError as exc:
        raise ValueError(
            f"is not a valid template ({exc}); use {{firstName}} {{lastName}}"
        ) from None
    for field in fields:
        if field not in PLACEHOLDERS:
            known = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{field}}}; the known ones are {known}")
    return template


@dataclass(frozen=True)
class Texts:
    """The message text of each kind: its default, or the operator's template from settings."""

    templates: Mapping[str, str]

    def render(self, kind: str, recipient: Recipient) -> str:
        template = self.templates.get(kind) or kind_named(kind).default_template
        return template.format_map({name: read(recipient) for name, read in PLACEHOLDERS.items()})


DEFAULT_TEXTS = Texts({})
