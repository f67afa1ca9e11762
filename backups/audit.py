"""The audit log: one call records who did what to which object, and how it ended.

Who is whoever the caller names: a user, or, when the caller names nobody, the actor of
the request or command under way (`audit_actor`): the signed-in user of a page (set by
`AuditActorMiddleware`), the operating-system account behind a command (`cli:alice`).
With neither, the system did it (a worker, housekeeping).
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import models

from backups.models import AuditEvent, Source

_actor: ContextVar[Any] = ContextVar("audit_actor", default=None)


@dataclass(frozen=True)
class CommandLineActor:
    """The operating-system account that ran a command, and the sudo caller behind it."""

    os_user: str
    sudo_user: str = ""
    is_authenticated = False

    @classmethod
    def current(cls) -> CommandLineActor:
        """Return the account of this process: its effective user, and SUDO_USER when set.

        The effective user comes from the kernel, not from $USER, which anyone can set.
        SUDO_USER names the person behind `sudo -u backups …`; it is an environment
        variable, so the record keeps the effective user beside it.
        """
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            # A container user without a passwd entry.
            name = str(uid)
        sudo = os.environ.get("SUDO_USER", "").strip()
        return cls(os_user=name, sudo_user=sudo if sudo != name else "")

    @property
    def name(self) -> str:
        """Return the name the audit log shows: `cli:` and the person's account."""
        return f"cli:{self.sudo_user or self.os_user}"[:150]

    def detail(self) -> dict[str, str]:
        """Return the accounts to keep in an audit record's detail."""
        found = {"os_user": self.os_user}
        if self.sudo_user:
            found["sudo_user"] = self.sudo_user
        return found


@contextmanager
def audit_actor(actor) -> Iterator[None]:
    """Attribute the audit records written inside the block that name nobody to `actor`."""
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def current_actor():
    """Return the actor set by `audit_actor` for this request or command, or None."""
    return _actor.get()


class AuditActorMiddleware:
    """Attribute what a request changes to its user, also changes recorded by signals.

    A page passes its user explicitly; a change to an account or a group made through the
    admin is recorded by a model signal, which knows no request.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        with audit_actor(request.user):
            return self.get_response(request)


def audit_record(
    *,
    actor,
    action: str,
    outcome: str,
    obj: models.Model | None = None,
    source: Source | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Write an audit event.

    `actor` is a user, an anonymous user, a CommandLineActor, or None: then the actor of
    the request or command under way, or the system when there is none.
    """
    if actor is None:
        actor = current_actor()
    detail = dict(detail or {})
    user = actor if getattr(actor, "is_authenticated", False) else None
    if user is not None:
        name = user.get_username()
    elif isinstance(actor, CommandLineActor):
        name = actor.name
        detail.update(actor.detail())
    else:
        name = "anonymous" if actor is not None else "system"
    if source is None and isinstance(obj, Source):
        source = obj
    return AuditEvent.objects.create(
        actor=user,
        actor_name=name,
        action=action,
        outcome=outcome,
        object_type=obj._meta.model_name if obj is not None else "",
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=str(obj)[:300] if obj is not None else "",
        source=source,
        detail=detail,
    )


def _plain(value):
    """Return `value` as the audit detail (JSON) stores it, readable without the catalog."""
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def field_values(obj: models.Model, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Return the values of `obj`'s editable fields (or of `names`), as the audit shows them."""
    fields = [
        field
        for field in obj._meta.concrete_fields
        if field.editable and not field.primary_key and (names is None or field.name in names)
    ]
    # A foreign key shows the related object's name, not its id.
    return {
        field.name: _plain(
            getattr(obj, field.name) if field.is_relation else field.value_from_object(obj)
        )
        for field in fields
    }


def field_changes(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, list]:
    """Return `{field: [old, new]}` for every field whose value differs (old None: created)."""
    before = before or {}
    return {
        name: [before.get(name), value]
        for name, value in after.items()
        if name not in before or before[name] != value
    }
