"""Audit records for changes to accounts, groups and permissions, from any door.

Accounts and groups belong to django.contrib.auth and change through its admin, through
`createsuperuser`, a shell or a script: only model signals see them all. Each receiver
records one event; the actor is the request's user or the command's account
(`audit_actor`), and, outside both, the operating-system account of the process, since
only a person at a shell changes accounts there.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from backups.audit import CommandLineActor, audit_record, current_actor
from backups.models import AuditEvent

# The account fields whose change the audit keeps, with their old and new values.
WATCHED = ("username", "is_active", "is_staff", "is_superuser")


def _actor():
    return current_actor() or CommandLineActor.current()


def _record(action: str, obj, detail: dict) -> None:
    audit_record(
        actor=_actor(), action=action, outcome=AuditEvent.Outcome.SUCCEEDED, obj=obj, detail=detail
    )


def _user_before_save(sender, instance, update_fields=None, **kwargs) -> None:
    # A login saves only last_login, or only the password when Django re-hashes it with
    # stronger parameters: neither is a change anyone made, and neither costs a query.
    # Password changes (the admin's form, `changepassword`) save the whole user.
    if instance.pk is None or (update_fields is not None and not set(WATCHED) & set(update_fields)):
        instance._audit_before = None
        return
    instance._audit_before = (
        sender._default_manager.filter(pk=instance.pk).values(*WATCHED, "password").first()
    )


def _user_saved(sender, instance, created, **kwargs) -> None:
    if created:
        _record("user.create", instance, {name: getattr(instance, name) for name in WATCHED})
        return
    before = getattr(instance, "_audit_before", None)
    if before is None:
        return
    changes = {
        name: [before[name], getattr(instance, name)]
        for name in WATCHED
        if before[name] != getattr(instance, name)
    }
    if changes:
        _record("user.change", instance, {"changes": changes})
    if before["password"] != instance.password:
        _record("user.password", instance, {})


def _user_deleted(sender, instance, **kwargs) -> None:
    _record("user.delete", instance, {"username": instance.get_username()})


def _group_saved(sender, instance, created, **kwargs) -> None:
    if created:
        _record("group.create", instance, {"name": instance.name})


def _group_deleted(sender, instance, **kwargs) -> None:
    _record("group.delete", instance, {"name": instance.name})


def _label(obj) -> str:
    if isinstance(obj, Permission):
        return f"{obj.content_type.app_label}.{obj.codename}"
    if isinstance(obj, Group):
        return obj.name
    return obj.get_username()


def _membership(action_name: str, owner_model, member_model):
    """Return an m2m_changed receiver recording what was added to or removed from a set.

    The relation can be changed from either side (`user.groups.add(g)` or
    `group.user_set.add(u)`); the event is always about the owner (the user, the group),
    one event per owner touched.
    """

    def receiver(sender, instance, action, reverse, pk_set, **kwargs) -> None:
        if action == "pre_clear":
            # After the clear nothing says what was removed: remember it now.
            owner_fk, member_fk = (
                next(f for f in sender._meta.fields if f.is_relation and f.related_model is m)
                for m in (owner_model, member_model)
            )
            mine, theirs = (member_fk, owner_fk) if reverse else (owner_fk, member_fk)
            links = sender._default_manager.filter(**{mine.name: instance})
            instance._audit_cleared = set(links.values_list(theirs.attname, flat=True))
            return
        if action not in ("post_add", "post_remove", "post_clear"):
            return
        if action == "post_clear":
            pk_set = instance.__dict__.pop("_audit_cleared", set())
        if not pk_set:
            return
        verb = "added" if action == "post_add" else "removed"
        if reverse:
            for owner in owner_model._default_manager.filter(pk__in=pk_set):
                _record(action_name, owner, {verb: [_label(instance)]})
            return
        members = member_model._default_manager.filter(pk__in=pk_set)
        if member_model is Permission:
            members = members.select_related("content_type")
        _record(action_name, instance, {verb: sorted(_label(obj) for obj in members)})

    return receiver


def connect() -> None:
    """Connect the receivers (once, from the app's ready())."""
    user = get_user_model()
    pre_save.connect(_user_before_save, sender=user, dispatch_uid="audit-user-pre-save")
    post_save.connect(_user_saved, sender=user, dispatch_uid="audit-user-saved")
    post_delete.connect(_user_deleted, sender=user, dispatch_uid="audit-user-deleted")
    post_save.connect(_group_saved, sender=Group, dispatch_uid="audit-group-saved")
    post_delete.connect(_group_deleted, sender=Group, dispatch_uid="audit-group-deleted")
    m2m_changed.connect(
        _membership("user.groups", user, Group),
        sender=user.groups.through,
        dispatch_uid="audit-user-groups",
        weak=False,
    )
    m2m_changed.connect(
        _membership("user.permissions", user, Permission),
        sender=user.user_permissions.through,
        dispatch_uid="audit-user-permissions",
        weak=False,
    )
    m2m_changed.connect(
        _membership("group.permissions", Group, Permission),
        sender=Group.permissions.through,
        dispatch_uid="audit-group-permissions",
        weak=False,
    )
