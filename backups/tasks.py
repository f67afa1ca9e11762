"""django-q2 entry points: each loads by id and calls one service."""

from __future__ import annotations

from backups.services.execution import run_execute


def execute_run(run_id: int) -> str:
    """Execute one queued run (a duplicate delivery is a no-op) and return its status."""
    return run_execute(run_id).status
