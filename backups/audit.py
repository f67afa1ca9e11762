"""The audit log: one call records who did what to which object, and how it ended."""

from __future__ import annotations

from typing import Any

from django.db import models

from backups.models import AuditEvent, Source


def audit_record(
    *,
    actor,
    action: str,
    outcome: str,
    obj: models.Model | None = None,
    source: Source | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Write an audit event; `actor` may be a user, an anonymous user or None (the system)."""
    user = actor if getattr(actor, "is_authenticated", False) else None
    if source is None and isinstance(obj, Source):
        source = obj
    return AuditEvent.objects.create(
        actor=user,
        actor_name=user.get_username() if user else ("anonymous" if actor else "system"),
        action=action,
        outcome=outcome,
        object_type=obj._meta.model_name if obj is not None else "",
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=str(obj)[:300] if obj is not None else "",
        source=source,
        detail=detail or {},
    )
