"""Formatting for the dashboard's pages: durations, ages, sizes, hashes and status badges.

Every status is shown as words with a symbol, never as a colour alone.
"""

from __future__ import annotations

import json
from datetime import datetime
from urllib.parse import quote

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from backups.services.compliance import Health, Integrity, RpoStatus, RtoStatus
from backups.services.formats import format_bytes, format_duration

register = template.Library()

# Label and symbol for each status word the pages show; the CSS adds colour on top.
BADGES = {
    "ok": ("OK", "✓"),
    "succeeded": ("succeeded", "✓"),
    "warning": ("warning", "!"),
    "at_risk": ("at risk", "!"),
    "breached": ("breached", "✗"),
    "failed": ("failed", "✗"),
    "abandoned": ("abandoned", "✗"),
    "cancelled": ("cancelled", "–"),
    "unknown": ("unknown", "?"),
    "unproven": ("unproven", "?"),
    "never": ("never backed up", "?"),
    "queued": ("queued", "…"),
    "running": ("running", "▶"),
    "pruning": ("pruning", "…"),
    "pruned": ("pruned", "–"),
    "denied": ("denied", "✗"),
    "requested": ("requested", "…"),
    "firing": ("firing", "✗"),
    "resolved": ("resolved", "✓"),
    "silenced": ("silenced", "–"),
    "delivered": ("delivered", "✓"),
    "pending": ("pending", "…"),
    "sending": ("sending", "…"),
}
# The standing's words are labelled as the compliance service's vocabulary says.
for _choices in (Health, RpoStatus, RtoStatus, Integrity):
    for _value, _label in _choices.choices:
        BADGES[_value] = (_label, BADGES[_value][1])
# Which CSS tone a status gets.
TONES = {
    "ok": "ok",
    "succeeded": "ok",
    "warning": "warn",
    "at_risk": "warn",
    "breached": "bad",
    "failed": "bad",
    "abandoned": "bad",
    "denied": "bad",
    "running": "live",
    "queued": "live",
    "pruning": "live",
    "requested": "live",
    "firing": "bad",
    "resolved": "ok",
    "delivered": "ok",
    "pending": "live",
    "sending": "live",
}


@register.simple_tag
def badge(status: str | None, label: str | None = None):
    """Render a status as a badge: symbol and words, coloured by the stylesheet."""
    status = status or "unknown"
    default_label, symbol = BADGES.get(status, (status.replace("_", " "), "•"))
    return format_html(
        '<span class="badge tone-{}" data-status="{}"><span aria-hidden="true">{}</span> {}</span>',
        TONES.get(status, "none"),
        status,
        symbol,
        label or default_label,
    )


@register.filter
def duration(seconds) -> str:
    """Format a number of seconds in its two largest units: `42s`, `3m 5s`, `2h 5m`."""
    if seconds is None or seconds == "":
        return "—"
    return format_duration(float(seconds))


@register.filter(name="bytes")
def size(count) -> str:
    """Format a byte count in IEC units, as every page and command does: `1.5 MiB`."""
    if count is None or count == "":
        return "—"
    return format_bytes(count)


@register.filter
def age(moment: datetime | None, now: datetime | None = None) -> str:
    """Format how long ago `moment` was: `3 h 2 min ago`, or `in 5 min` for the future."""
    if moment is None:
        return "never"
    delta = ((now or timezone.now()) - moment).total_seconds()
    if -1 < delta < 1:
        return "just now"
    span = format_duration(abs(delta))
    return f"{span} ago" if delta > 0 else f"in {span}"


@register.filter
def percent(value) -> str:
    """Format a 0-1 share as a percentage with one decimal."""
    if value is None:
        return "—"
    return f"{float(value) * 100:.1f} %"


@register.filter
def audit_value(value) -> str:
    """Format a value of an audit record's detail: text as it is, the rest as JSON.

    An edit's `changes` read `{"rpo_s": [7200, 10800]}` rather than Python's repr.
    """
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


@register.filter
def octal_mode(mode) -> str:
    """Format permission bits the way `ls -l` users read them: `0644`."""
    if mode in (None, ""):
        return ""
    return f"{int(mode) & 0o7777:04o}"


@register.filter
def short_hash(value) -> str:
    """Return the first 12 hex digits of a hash (bytes or hex string)."""
    if not value:
        return ""
    text = value if isinstance(value, str) else bytes(value).hex()
    return text[:12]


def _modified(mtime, zone) -> tuple[str, str]:
    """Return an mtime as (ISO 8601, shown); a date no calendar holds is shown as a number.

    A manifest is read from disk and may say anything (an mtime of 10**12 is year 33658),
    and a catalog filled before manifests were checked may hold any value.
    """
    try:
        moment = datetime.fromtimestamp(mtime, tz=zone)
    except (OverflowError, OSError, ValueError, TypeError):
        return "", f"{mtime} (out of range)"
    return moment.isoformat(), f"{moment:%Y-%m-%d %H:%M}"


@register.simple_tag
def entry_rows(rows, can_restore: bool, search: bool = False):
    """Render a folder listing's or a search's table rows.

    Built in Python, as the admin builds its change list rows: a page shows up to 200
    entries, and rendering each cell through the template engine costs more than the
    database does.
    """
    zone = timezone.get_current_timezone()
    parts = []
    for index, row in enumerate(rows, 1):
        pick = (
            format_html(
                '<td data-label="Pick"><input type="checkbox" name="path" value="{}" '
                'id="pick-{}" aria-label="Restore {}"></td>',
                row.path,
                index,
                row.path,
            )
            if can_restore
            else ""
        )
        if search:
            folder_link = format_html(
                '<a href="?path={}">{}</a>{}',
                quote(row.folder),
                row.folder or "/",
                "/" if row.folder else "",
            )
            name = (
                format_html('<a href="?path={}">{}/</a>', quote(row.path), row.path)
                if row.is_dir
                else format_html("{}{}", folder_link, row.name)
            )
        elif row.is_dir:
            name = format_html('<a href="?path={}">{}/</a>', quote(row.path), row.name)
        else:
            name = row.name
        if row.target:
            name = format_html("{} → <code>{}</code>", name, row.target)
        sha = row.sha256_hex
        parts.append(
            format_html(
                '<tr>{}<th scope="row" data-label="{}">{}</th><td data-label="Type">{}</td>'
                '<td data-label="Size">{}</td><td data-label="Mode"><code>{}</code></td>'
                '<td data-label="Modified"><time datetime="{}">{}</time></td>'
                '<td data-label="SHA-256">{}</td></tr>',
                pick,
                "Path" if search else "Name",
                name,
                row.type_label,
                "" if row.is_dir else format_bytes(row.size),
                octal_mode(row.mode),
                *_modified(row.mtime, zone),
                format_html('<code class="hash" title="{}">{}…</code>', sha, sha[:12])
                if sha
                else "",
            )
        )
    return mark_safe("".join(parts))  # each part was built with format_html


@register.simple_tag
def fleet_rows(rows, columns, now: datetime):
    """Render the overview's table rows, one per source, one cell per column.

    Built in Python, as `entry_rows` is: the overview refreshes itself every few seconds,
    and each of its 50 rows through the template engine cost more than its queries. The
    first column heads its row.
    """
    parts = []
    for row in rows:
        cells = [
            format_html(
                '        <{} {}data-label="{}">{}</{}>\n',
                tag,
                mark_safe('scope="row" ') if tag == "th" else "",
                column.label,
                column.cell(row, now),
                tag,
            )
            for tag, column in zip(["th", *["td"] * (len(columns) - 1)], columns, strict=True)
        ]
        parts.append(
            format_html(
                '<tr class="health-{}">\n{}      </tr>', row.health, mark_safe("".join(cells))
            )
        )
    return mark_safe("\n      ".join(parts))  # each part was built with format_html
