"""Charts as inline SVG, drawn on the server: no JavaScript, no build step.

Each chart carries a <title> and a <desc> that say in words what it shows; failed runs are
drawn as crosses (not only in another colour), the target is a dashed, labelled line, and
time above target is hatched, so nothing depends on telling colours apart.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 190
LEFT, RIGHT, TOP, BOTTOM = 70, 70, 14, 26
# More sawtooth corners than this are folded into one maximum per pixel column.
MAX_VERTICES = 600


@dataclass
class Point:
    """One run on a chart: when, the value, and whether it failed."""

    at: datetime
    value: float
    failed: bool = False
    label: str = ""


def _nice_max(value: float) -> float:
    """Round a maximum up to 1, 2 or 5 times a power of ten, for readable gridlines."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 1.0
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


class _Frame:
    """Map time and value to SVG coordinates inside the plot area."""

    def __init__(self, start: datetime, end: datetime, y_max: float) -> None:
        self.start, self.end = start, end
        self.span = max((end - start).total_seconds(), 1.0)
        self.y_max = y_max
        self.width = WIDTH - LEFT - RIGHT
        self.height = HEIGHT - TOP - BOTTOM

    # Coordinates are rounded to a tenth of a pixel: plenty for the eye, short in the HTML.
    def x(self, at: datetime) -> float:
        return round(LEFT + self.width * (at - self.start).total_seconds() / self.span, 1)

    def y(self, value: float) -> float:
        return round(TOP + self.height * (1 - min(value, self.y_max) / self.y_max), 1)


def _time_label(at: datetime, span_s: float) -> str:
    local = timezone.localtime(at)
    return f"{local:%H:%M}" if span_s < 2 * 86400 else f"{local:%b %d}"


def _axes(frame: _Frame, y_format: Callable[[float], str]) -> list[str]:
    parts = []
    for share in (0, 0.5, 1):
        value = frame.y_max * share
        y = frame.y(value)
        parts.append(
            format_html(
                '<line class="grid" x1="{}" y1="{}" x2="{}" y2="{}"/>'
                '<text class="axis" x="{}" y="{}" text-anchor="end">{}</text>',
                LEFT,
                y,
                WIDTH - RIGHT,
                y,
                LEFT - 6,
                round(y + 4, 1),
                y_format(value),
            )
        )
    for share, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        at = frame.start + timedelta(seconds=frame.span * share)
        parts.append(
            format_html(
                '<text class="axis" x="{}" y="{}" text-anchor="{}">{}</text>',
                frame.x(at),
                HEIGHT - 6,
                anchor,
                _time_label(at, frame.span),
            )
        )
    return parts


def _target_line(frame: _Frame, target: float, label: str) -> str:
    y = frame.y(target)
    return format_html(
        '<line class="target" x1="{}" y1="{}" x2="{}" y2="{}"/>'
        '<text class="target-label" x="{}" y="{}">{}</text>',
        LEFT,
        y,
        WIDTH - RIGHT,
        y,
        WIDTH - RIGHT + 4,
        y + 4,
        label,
    )


def _svg(chart_id: str, title: str, description: str, body: Sequence[str]) -> SafeString:
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" '
        'aria-labelledby="{}-title {}-desc" xmlns="http://www.w3.org/2000/svg">'
        '<title id="{}-title">{}</title><desc id="{}-desc">{}</desc>{}</svg>',
        WIDTH,
        HEIGHT,
        chart_id,
        chart_id,
        chart_id,
        title,
        chart_id,
        description,
        mark_safe("".join(body)),  # every part was built with format_html
    )


def runs_chart(
    *,
    chart_id: str,
    title: str,
    points: Sequence[Point],
    y_format: Callable[[float], str],
) -> SafeString:
    """Draw one value per run over time: a line through the runs, crosses for failures."""
    if not points:
        return format_html('<p class="chart-empty">No runs to chart yet ({}).</p>', title)
    points = sorted(points, key=lambda p: p.at)
    start, end = points[0].at, points[-1].at
    if start == end:
        start -= timedelta(hours=1)
        end += timedelta(hours=1)
    frame = _Frame(start, end, _nice_max(max(p.value for p in points)))
    good = [p for p in points if not p.failed]
    failed = [p for p in points if p.failed]
    body = _axes(frame, y_format)
    if len(good) > 1:
        body.append(
            format_html(
                '<polyline class="series" points="{}"/>',
                " ".join(f"{frame.x(p.at):.1f},{frame.y(p.value):.1f}" for p in good),
            )
        )
    for point in good:
        body.append(
            format_html(
                '<circle class="dot" cx="{}" cy="{}" r="3"><title>{}</title></circle>',
                frame.x(point.at),
                frame.y(point.value),
                point.label,
            )
        )
    for point in failed:
        x, y = frame.x(point.at), frame.y(point.value)
        body.append(
            format_html(
                '<path class="cross" d="M{},{}l8,8m0,-8l-8,8"><title>{}</title></path>',
                round(x - 4, 1),
                round(y - 4, 1),
                point.label,
            )
        )
    values = sorted(p.value for p in good) or [0.0]
    description = (
        f"{len(points)} backups from {_time_label(points[0].at, frame.span)} to "
        f"{_time_label(points[-1].at, frame.span)}; median {y_format(values[len(values) // 2])}"
        f", largest {y_format(values[-1])}"
        + (f"; {len(failed)} failed, drawn as crosses." if failed else ".")
    )
    return _svg(chart_id, title, description, body)


def rpo_ages(
    backup_times: Sequence[datetime], start: datetime, end: datetime
) -> list[tuple[datetime, float]]:
    """Return the corners of the RPO age curve over [start, end].

    The age of the newest backup grows by one second per second and drops to zero at each
    backup; before the first backup there is no age (the curve starts there).
    """
    times = sorted(backup_times)
    first = bisect.bisect_right(times, start) - 1
    corners: list[tuple[datetime, float]] = []
    last = times[first] if first >= 0 else None
    if last is not None:
        corners.append((start, (start - last).total_seconds()))
    for moment in times[first + 1 :]:
        if moment > end:
            break
        if last is not None:
            corners.append((moment, (moment - last).total_seconds()))
        corners.append((moment, 0.0))
        last = moment
    if last is not None:
        corners.append((end, (end - last).total_seconds()))
    return corners


def _fold(corners: list[tuple[datetime, float]], frame: _Frame) -> list[tuple[float, float]]:
    """Keep one maximum per pixel column when there are more corners than pixels."""
    if len(corners) <= MAX_VERTICES:
        return [(frame.x(at), age) for at, age in corners]
    columns: dict[int, float] = {}
    for at, age in corners:
        column = int(frame.x(at))
        columns[column] = max(columns.get(column, 0.0), age)
    return [(float(column), age) for column, age in sorted(columns.items())]


def rpo_chart(
    *,
    chart_id: str,
    backup_times: Sequence[datetime],
    start: datetime,
    end: datetime,
    target_s: int | None,
    y_format: Callable[[float], str],
) -> SafeString:
    """Draw the age of the newest good backup over time against the RPO target."""
    title = "Age of the newest good backup (RPO) over the last 30 days"
    corners = rpo_ages(backup_times, start, end)
    if not corners:
        return mark_safe('<p class="chart-empty">No successful backup yet: no RPO age.</p>')
    peak = max(age for _, age in corners)
    frame = _Frame(start, end, _nice_max(max(peak, (target_s or 0) * 1.25)))
    folded = _fold(corners, frame)
    base = frame.y(0)
    outline = " ".join(f"{x:.1f},{frame.y(age):.1f}" for x, age in folded)
    area = f"{folded[0][0]:.1f},{base:.1f} {outline} {folded[-1][0]:.1f},{base:.1f}"
    body = _axes(frame, y_format)
    body.append(format_html('<polygon class="area" points="{}"/>', area))
    if target_s:
        # Time above the target is hatched: the same area, clipped to above the target line.
        body.append(
            format_html(
                '<defs><pattern id="{}-hatch" width="6" height="6" '
                'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
                '<line class="hatch" x1="0" y1="0" x2="0" y2="6"/></pattern>'
                '<clipPath id="{}-above"><rect x="{}" y="{}" width="{}" height="{}"/>'
                "</clipPath></defs>"
                '<polygon class="breach" points="{}" fill="url(#{}-hatch)" '
                'clip-path="url(#{}-above)"/>',
                chart_id,
                chart_id,
                LEFT,
                TOP,
                frame.width,
                round(frame.y(target_s) - TOP, 1),
                area,
                chart_id,
                chart_id,
            )
        )
    body.append(format_html('<polyline class="series" points="{}"/>', outline))
    if target_s:
        body.append(_target_line(frame, target_s, f"target {y_format(target_s)}"))
    above = ""
    if target_s:
        above = (
            f" Time above the target of {y_format(target_s)} is hatched."
            if peak > target_s
            else f" It never went above the target of {y_format(target_s)}."
        )
    description = f"The age peaked at {y_format(peak)}.{above}"
    return _svg(chart_id, title, description, body)
