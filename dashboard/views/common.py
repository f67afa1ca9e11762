"""Helpers shared by the pages: bounded pagination, audited permissions, progress."""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps

from django.contrib.auth.decorators import permission_required

from backups.audit import audit_record
from backups.models import AuditEvent, Run


@dataclass
class Pager:
    """One page of a list, found without COUNT(*): one extra row says whether more follow."""

    items: list
    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def next_number(self) -> int:
        return self.number + 1

    @property
    def previous_number(self) -> int:
        return self.number - 1

    @property
    def has_other_pages(self) -> bool:
        return self.has_next or self.has_previous


# Far beyond any real list, and small enough that page × rows per page stays a number
# every database takes as an OFFSET.
MAX_PAGE = 1_000_000


def page_number(request, param: str = "page") -> int:
    """Return the page asked for in the query string; anything odd means the first page,
    anything past MAX_PAGE the (empty) page MAX_PAGE."""
    try:
        return min(MAX_PAGE, max(1, int(request.GET.get(param, 1))))
    except (TypeError, ValueError):
        return 1


def paginate(items, request, per_page: int, param: str = "page") -> Pager:
    """Return one page of `items` (a queryset or a list) with a single bounded query.

    A COUNT(*) over a large table costs more than the page itself, and nobody needs to know
    there are 4,812 pages: "older" and "newer" links are enough.
    """
    number = page_number(request, param)
    start = (number - 1) * per_page
    rows = list(items[start : start + per_page + 1])
    return Pager(items=rows[:per_page], number=number, has_next=len(rows) > per_page)


def permission_required_audited(perm: str):
    """Require `perm` (403 otherwise) and record every refusal in the audit log.

    A refused restore is something an auditor wants to see, not only a line in the
    web server's access log.
    """

    def decorator(view):
        guarded = permission_required(perm, raise_exception=True)(view)

        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.has_perm(perm):
                audit_record(
                    actor=request.user,
                    action="permission.denied",
                    outcome=AuditEvent.Outcome.DENIED,
                    detail={"permission": perm, "method": request.method, "path": request.path},
                )
            return guarded(request, *args, **kwargs)

        return wrapper

    return decorator


def progress_of(run: Run, now) -> dict:
    """Return what a progress bar shows: percent, rate (bytes/s), ETA (s), counters."""
    percent = None
    if run.bytes_total:
        percent = min(100.0, 100.0 * run.bytes_done / run.bytes_total)
    elif run.files_total:
        percent = min(100.0, 100.0 * run.files_done / run.files_total)
    if run.status in Run.GOOD:
        percent = 100.0
    elapsed = None
    if run.started_at:
        elapsed = ((run.finished_at or now) - run.started_at).total_seconds()
    rate = run.bytes_done / elapsed if elapsed and run.bytes_done else None
    eta = None
    if run.is_active and rate and run.bytes_total and run.bytes_total > run.bytes_done:
        eta = (run.bytes_total - run.bytes_done) / rate
    return {
        "percent": percent,
        "percent_int": int(percent) if percent is not None else None,
        "elapsed": elapsed,
        "rate": rate,
        "eta": eta,
    }
