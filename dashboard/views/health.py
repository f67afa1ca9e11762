"""The two endpoints that need no login: health for load balancers, metrics for Prometheus."""

from __future__ import annotations

import hmac
import logging
import os
import tempfile
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from backups.services.alerts import alerts_watch_workers
from backups.services.probes import workers_seen_at
from dashboard.metrics import render_metrics

logger = logging.getLogger(__name__)


def _storage() -> dict:
    """Create and remove a probe file under ARCHIVE_ROOT: can backups be written there?"""
    try:
        handle, name = tempfile.mkstemp(prefix=".healthz-", dir=settings.ARCHIVE_ROOT)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        # The reason without the path: this answer needs no login.
        return {"storage": "error", "storage_detail": error.strerror or type(error).__name__}
    return {"storage": "ok"}


def _watch_workers() -> None:
    """Judge the "workers down" alert: with every worker gone, only this process can."""
    try:
        alerts_watch_workers()
    except Exception:  # the answer must not depend on the alerts
        logger.exception("judging the workers-down alert failed")


@login_not_required
@never_cache
@require_GET
def healthz(request):
    """Answer 200 when the database answers, 503 otherwise; no login, for load balancers.

    The body also tells whether a worker ran housekeeping lately and whether the archive
    storage takes a new file. Neither changes the status: the pages still work without
    them, and a load balancer must not take the web interface away for it.
    """
    try:
        seen = workers_seen_at()
    except Exception as error:  # any database failure means "not healthy"
        return JsonResponse(
            {"status": "error", "database": "unavailable", "detail": type(error).__name__},
            status=503,
        )
    alive = seen is not None and timezone.now() - seen <= timedelta(
        seconds=settings.WORKERS_SILENT_S
    )
    _watch_workers()
    return JsonResponse(
        {
            "status": "ok",
            "database": "ok",
            "workers": "ok" if alive else "down",
            "workers_seen_at": seen.isoformat() if seen else None,
            **_storage(),
        }
    )


@login_not_required
@never_cache
@require_GET
def metrics(request):
    """Prometheus metrics; with METRICS_TOKEN set, a bearer token is required.

    Without a token they answer only where they were opened on purpose (METRICS_PUBLIC,
    on by default with DEBUG): the figures name every source and its standing.
    """
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
    elif not settings.METRICS_PUBLIC:
        return HttpResponse(
            "The metrics are closed: set METRICS_TOKEN and scrape with "
            "'Authorization: Bearer <token>', or set METRICS_PUBLIC=1 to open them.\n",
            status=403,
            content_type="text/plain",
        )
    _watch_workers()
    body, content_type = render_metrics()
    return HttpResponse(body, content_type=content_type)
