"""What /healthz asks of the catalog: does the database answer, did a worker run lately."""

from __future__ import annotations

from datetime import datetime

from django.db import connection

from backups.models import WorkerBeat
from backups.services.schedules import HOUSEKEEPING_NAME


def workers_seen_at() -> datetime | None:
    """Return when a worker last ran the every-minute housekeeping (None: never).

    Ask the database a trivial question first, so a database that does not answer
    raises here, whatever the state of the table.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return WorkerBeat.objects.filter(name=HOUSEKEEPING_NAME).values_list("at", flat=True).first()
