"""Small server-side SVG charts: pure functions from counts to markup, no script needed.

Every bar carries its hour and count as data attributes and a <title> (the tooltip), so what a
chart shows can be read by people with screen readers and by tests alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from markupsafe import Markup

WIDTH = 720
HEIGHT = 180
_LEFT = 40  # room for the y-axis labels
_BOTTOM = 24  # room for the x-axis labels
_TOP = 10
# One colour per series, in order (sent, retried, dead, skipped in the outcomes chart).
PALETTE = ("#2b6cb0", "#d69e2e", "#c53030", "#718096", "#2f855a")
# A ledger status keeps its colour wherever it is drawn: the same as its outcome above.
STATUS_COLOURS = {
    "sent": PALETTE[0],
    "failed": PALETTE[1],
    "dead": PALETTE[2],
    "skipped": PALETTE[3],
    "pending": "#90cdf4",
    "queued": "#63b3ed",
    "sending": "#4299e1",
    "cancelled": "#cbd5e0",
}
_UNKNOWN = "#a0aec0"


@dataclass(frozen=True)
class Series:
    name: str
    counts: Sequence[int]


def hour_labels(start: datetime, hours: int) -> list[datetime]:
    return [start + timedelta(hours=i) for i in range(hours)]


def _scale_max(largest: int) -> int:
    """A round top for the y axis (1, 2 or 5 times a power of ten), at least 1."""
    if largest <= 5:
        return max(1, largest)
    magnitude: int = 10 ** (len(str(largest)) - 1)
    step = next(step for step in (1, 2, 5, 10) if largest <= step * magnitude)
    return step * magnitude


def _iso_hour(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:00Z")


def stacked_bars(
    title: str, start: datetime, series: Sequence[Series], *, unit: str = "messages"
) -> Markup:
    """Hourly bars from `start`, one stack per hour with a segment per series.

    All series have the same length (the number of hours). A single series is a plain bar chart.
    """
    hours = len(series[0].counts) if series else 0
    if any(len(s.counts) != hours for s in series):
        raise ValueError("every series needs one count per hour")
    totals = [sum(s.counts[i] for s in series) for i in range(hours)]
    top = _scale_max(max(totals, default=0))
    plot_w, plot_h = WIDTH - _LEFT, HEIGHT - _BOTTOM - _TOP
    slot = plot_w / hours if hours else plot_w
    bar_w = max(1.0, slot * 0.8)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg" '
        f'aria-label="{escape(title)}: {sum(totals)} {escape(unit)}" '
        f'data-total="{sum(totals)}">',
        f"<title>{escape(title)}</title>",
    ]
    # Axis: the baseline and the top value.
    base_y = _TOP + plot_h
    parts.append(
        f'<line class="axis" x1="{_LEFT}" y1="{base_y}" x2="{WIDTH}" y2="{base_y}" '
        'stroke="#888" stroke-width="1"/>'
    )
    parts.append(
        f'<text class="tick" x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end" '
        f'font-size="10">{top}</text>'
    )
    parts.append(
        f'<text class="tick" x="{_LEFT - 4}" y="{base_y}" text-anchor="end" font-size="10">0</text>'
    )
    for i, moment in enumerate(hour_labels(start, hours)):
        x = _LEFT + i * slot + (slot - bar_w) / 2
        y = float(base_y)
        label = _iso_hour(moment)
        group = [
            f'<g class="bar" data-hour="{label}" data-count="{totals[i]}">',
            f"<title>{label}: {totals[i]} {escape(unit)}</title>",
        ]
        for index, one in enumerate(series):
            count = one.counts[i]
            if count <= 0:
                continue
            height = plot_h * count / top
            y -= height
            colour = PALETTE[index % len(PALETTE)]
            group.append(
                f'<rect class="segment {escape(one.name)}" data-series="{escape(one.name)}" '
                f'data-count="{count}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{height:.1f}" fill="{colour}"/>'
            )
        group.append("</g>")
        parts.extend(group)
        if moment.hour % 6 == 0:  # an x label every six hours
            parts.append(
                f'<text class="tick" x="{x + bar_w / 2:.1f}" y="{HEIGHT - 8}" '
                f'text-anchor="middle" font-size="10">{moment.strftime("%d %H:00")}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped text only


def legend(names: Sequence[str], colours: Sequence[str] = PALETTE) -> Markup:
    """The colour key for stacked_bars (by default in its series order)."""
    items = "".join(
        f'<li><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" '
        f'fill="{colours[i % len(colours)]}"/></svg> {escape(name)}</li>'
        for i, name in enumerate(names)
    )
    return Markup(f'<ul class="legend">{items}</ul>')  # noqa: S704 - escaped above


def status_colour(status: str) -> str:
    return STATUS_COLOURS.get(status, _UNKNOWN)


def status_bar(counts: Mapping[str, int]) -> Markup:
    """One horizontal bar split by status, for today's messages; empty when there are none."""
    total = sum(counts.values())
    if total == 0:
        return Markup('<svg class="status-bar" width="0" height="0" aria-hidden="true"></svg>')
    parts = [
        f'<svg class="status-bar" role="img" viewBox="0 0 {WIDTH} 16" width="{WIDTH}" '
        f'height="16" xmlns="http://www.w3.org/2000/svg" aria-label="today by status">'
    ]
    x = 0.0
    for status, count in sorted(counts.items()):
        width = WIDTH * count / total
        parts.append(
            f'<rect data-status="{escape(status)}" data-count="{count}" x="{x:.1f}" y="0" '
            f'width="{width:.1f}" height="16" fill="{status_colour(status)}">'
            f"<title>{escape(status)}: {count}</title></rect>"
        )
        x += width
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped text only
