"""Formatting for the dashboard's pages: durations, ages, sizes, hashes and status badges.

Every status is shown as words with a symbol, never as a colour alone.
"""

from __future__ import annotations

import json
from datetime import datetime
from urllib.parse import quote

from django import template
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from backups.services.compliance import Health, Integrity, RpoStatus, RtoStatus

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


def _span(seconds: float) -> str:
    seconds = abs(float(seconds))
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@register.filter
def duration(seconds) -> str:
    """Format a number of seconds the way people say it: `42 s`, `3 min`, `2 h 5 min`."""
    if seconds is None or seconds == "":
        return "—"
    return _span(seconds)


@register.filter
def age(moment: datetime | None, now: datetime | None = None) -> str:
    """Format how long ago `moment` was: `3 h 2 min ago`, or `in 5 min` for the future."""
    if moment is None:
        return "never"
    delta = ((now or timezone.now()) - moment).total_seconds()
    if -1 < delta < 1:
        return "just now"
    return f"{_span(delta)} ago" if delta > 0 else f"in {_span(delta)}"


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


def _bytes(size: int) -> str:
    """Format a byte count like filesizeformat, without its per-call localisation cost."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


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
                "" if row.is_dir else _bytes(row.size),
                octal_mode(row.mode),
                *_modified(row.mtime, zone),
                format_html('<code class="hash" title="{}">{}…</code>', sha, sha[:12])
                if sha
                else "",
            )
        )
    return mark_safe("".join(parts))  # each part was built with format_html


@register.simple_tag
def fleet_rows(rows, now: datetime):
    """Render the overview's table rows, one per source's standing.

    Built in Python, as `entry_rows` is: the overview refreshes itself every few seconds,
    and each of its 50 rows through the template engine cost more than its queries.
    """
    parts = []
    for row in rows:
        source = row.source
        standing = row.standing
        name = format_html(
            '<a href="{}">{}</a><br><code class="location" title="{}">{}</code>{}',
            reverse("source-detail", args=[source.slug]),
            source.name,
            source.location,
            source.location,
            "" if source.enabled else mark_safe(" <em>(disabled)</em>"),
        )
        last = standing.last_backup
        if last:
            when = age(last.started_at or last.queued_at, now)
            size = f", {filesizeformat(last.size)}" if last.size is not None else ""
            last_cell = format_html(
                '{} <a href="{}">{}</a>{}',
                badge(last.status),
                reverse("run-detail", args=[last.pk]),
                when,
                size,
            )
        else:
            last_cell = "never"
        rpo = format_html(
            '{}<br><span class="measure">{} / target {}</span>',
            badge(standing.rpo_status),
            f"{duration(standing.age_s)} old" if standing.last_success_at else "no good backup",
            duration(standing.rpo_s),
        )
        drill = standing.last_drill_s
        rto = format_html(
            '{}<br><span class="measure">{} / target {}</span>',
            badge(standing.rto_status),
            f"drill {duration(drill)}" if drill is not None else "no drill",
            duration(standing.rto_s),
        )
        integrity = badge(standing.integrity)
        if standing.verified_at:
            integrity = format_html(
                '{}<br><span class="measure">checked {}</span>',
                integrity,
                age(standing.verified_at, now),
            )
        running = standing.running
        if running:
            next_cell = format_html(
                '<a href="{}">{} now</a>',
                reverse("run-detail", args=[running.pk]),
                badge(running.status),
            )
        elif standing.next_run_at:
            next_cell = age(standing.next_run_at, now)
        else:
            next_cell = "manual only"
        parts.append(
            format_html(
                '<tr class="health-{}">\n'
                '        <th scope="row" data-label="Source">{}</th>\n'
                '        <td data-label="Status">{}</td>\n'
                '        <td data-label="Kind">{}</td>\n'
                '        <td data-label="Owner">{}</td>\n'
                '        <td data-label="Policy">{}</td>\n'
                '        <td data-label="Last backup">{}</td>\n'
                '        <td data-label="RPO">{}</td>\n'
                '        <td data-label="RTO">{}</td>\n'
                '        <td data-label="Integrity">{}</td>\n'
                '        <td data-label="Next run">{}</td>\n'
                "      </tr>",
                row.health,
                name,
                badge(row.health),
                source.get_kind_display(),
                source.owner or "—",
                (source.policy.name if source.policy else "") or "none",
                last_cell,
                rpo,
                rto,
                integrity,
                next_cell,
            )
        )
    return mark_safe("\n      ".join(parts))  # each part was built with format_html
