"""The console's SVG charts: one bar per hour carrying its hour and count, stacked segments in
series order, heights in proportion, and text escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from birthday_scheduler.console import charts

START = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def bars(svg: ET.Element) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if g.get("class") == "bar"]


def test_one_bar_per_hour_with_its_hour_and_count() -> None:
    counts = [0, 3, 0, 7]
    svg = parse(charts.stacked_bars("Due", START, [charts.Series("due", counts)]))
    found = [(g.get("data-hour"), int(g.get("data-count", "-1"))) for g in bars(svg)]
    assert found == [
        ("2026-06-15T10:00Z", 0),
        ("2026-06-15T11:00Z", 3),
        ("2026-06-15T12:00Z", 0),
        ("2026-06-15T13:00Z", 7),
    ]
    assert svg.get("data-total") == "10"
    assert svg.get("aria-label") == "Due: 10 messages"


def test_bar_heights_are_in_proportion_to_the_counts() -> None:
    svg = parse(charts.stacked_bars("Due", START, [charts.Series("due", [2, 4, 1])]))
    heights = [float(r.get("height", "0")) for r in svg.iter(f"{SVG}rect")]
    assert heights[1] == pytest.approx(2 * heights[0], abs=0.1)
    assert heights[0] == pytest.approx(2 * heights[2], abs=0.1)
    # An empty hour draws no segment at all, not a zero-height one.
    empty = parse(charts.stacked_bars("Due", START, [charts.Series("due", [0, 1])]))
    assert len(list(empty.iter(f"{SVG}rect"))) == 1


def test_stacks_a_segment_per_series_in_order() -> None:
    series = [charts.Series("sent", [5, 0]), charts.Series("dead", [2, 1])]
    svg = parse(charts.stacked_bars("Outcomes", START, series))
    first, second = bars(svg)
    assert first.get("data-count") == "7"
    segments = [(r.get("data-series"), r.get("data-count")) for r in first.iter(f"{SVG}rect")]
    assert segments == [("sent", "5"), ("dead", "2")]
    # `sent` sits on the baseline, `dead` on top of it.
    sent, dead = first.iter(f"{SVG}rect")
    assert float(dead.get("y", "0")) + float(dead.get("height", "0")) == pytest.approx(
        float(sent.get("y", "0")), abs=0.1
    )
    assert [r.get("data-series") for r in second.iter(f"{SVG}rect")] == ["dead"]


def test_series_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one count per hour"):
        charts.stacked_bars("x", START, [charts.Series("a", [1]), charts.Series("b", [1, 2])])


@pytest.mark.parametrize(
    ("largest", "top"), [(0, 1), (3, 3), (7, 10), (12, 20), (45, 50), (100, 100), (101, 200)]
)
def test_the_axis_top_is_a_round_number_at_or_above_the_largest(largest: int, top: int) -> None:
    svg = charts.stacked_bars("x", START, [charts.Series("a", [largest])])
    assert f">{top}</text>" in svg


def test_text_is_escaped() -> None:
    svg = charts.stacked_bars("<b>&", START, [charts.Series('"><script>', [1])])
    assert "<script>" not in svg
    assert "<b>" not in svg
    parse(svg)  # still well-formed XML


def test_legend_lists_the_series_with_their_colours() -> None:
    legend = str(charts.legend(["sent", "retried"]))
    assert re.findall(r'fill="(#[0-9a-f]+)"/></svg> (\w+)', legend) == [
        (charts.PALETTE[0], "sent"),
        (charts.PALETTE[1], "retried"),
    ]


def test_status_bar_splits_the_width_by_status() -> None:
    svg = parse(charts.status_bar({"sent": 3, "dead": 1}))
    widths = {r.get("data-status"): float(r.get("width", "0")) for r in svg.iter(f"{SVG}rect")}
    assert widths == {"dead": pytest.approx(charts.WIDTH / 4), "sent": pytest.approx(540.0)}
    # A status has the colour of its outcome in the outcomes chart, wherever it sorts.
    colours = {r.get("data-status"): r.get("fill") for r in svg.iter(f"{SVG}rect")}
    assert colours == {"dead": charts.PALETTE[2], "sent": charts.PALETTE[0]}
    assert "<rect" not in charts.status_bar({})
