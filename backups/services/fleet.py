"""Fleet as code: bring the catalog in line with a fleet file, and write the catalog as one.

`fleet_plan` reads the catalog once, validates every object the file creates or changes
(`full_clean`, policy references, folder names) and returns the plan; nothing is written
until everything is valid. `fleet_apply` then writes the plan in one transaction with bulk
statements, so the number of queries does not grow with the number of sources, and records
it in the audit log. `fleet_export` writes the catalog in the same format.

Removal needs `prune`. A source that has runs is never deleted: its backups stay
restorable and its history stays in the reports. With `prune_with_backups` such a source is
retired instead: disabled (so its schedule goes), its policy and backups kept, so
retention (`prune`) goes on thinning them; later applies leave a disabled source that is
not in the file alone. A policy that a source outside the file still uses is kept, with a
note.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, ProtectedError, Q
from django.utils import timezone
from django.utils.text import slugify

from backups.engine.atomic import write_atomic
from backups.engine.errors import EngineError
from backups.engine.fleetfile import (
    POLICY_FIELDS,
    SOURCE_FIELDS,
    FleetFile,
    FleetFileError,
    Item,
    dump_fleet,
    load_fleet,
)
from backups.fields import exact_duration
from backups.models import AuditEvent, Policy, Run, Source
from backups.services.schedules import schedule_sync_all

DURATION_ATTRS = {
    "rpo_s",
    "rto_s",
    "drill_every_s",
    "run_timeout_s",
    "full_every_s",
    "differential_every_s",
}
POLICY_ATTRS = [spec.attr for spec in POLICY_FIELDS.values()]
# The slug is not compared like the others: it names the archive folder and never changes.
SOURCE_ATTRS = [spec.attr for spec in SOURCE_FIELDS.values() if spec.attr != "slug"]
KEYS = {
    "policy": {spec.attr: spec.key for spec in POLICY_FIELDS.values()},
    "source": {spec.attr: spec.key for spec in SOURCE_FIELDS.values()},
}


class FleetRefused(Exception):
    """The file cannot be applied; the message names the file, the object and the field."""


@dataclass
class Change:
    """One object the apply creates (+), changes (~) or removes (-)."""

    op: str
    type: str
    name: str
    # Catalog attribute -> (old, new), in the catalog's own values (policy by name).
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    retired_backups: int | None = None

    def describe(self) -> str:
        """Return the line the command prints for this change."""
        if self.op == "+":
            if self.type == "source":
                new = {attr: new for attr, (_, new) in self.changes.items()}
                policy = f", policy {new['policy']}" if new.get("policy") else ""
                return f"+ source {self.name} ({new['kind']} {new['location']}{policy})"
            shown = [
                f"{KEYS['policy'][attr]} {show(attr, new)}"
                for attr, (_, new) in self.changes.items()
                if new != _policy_default(attr)
            ]
            return f"+ policy {self.name}" + (f" ({', '.join(shown)})" if shown else "")
        if self.op == "~":
            parts = [
                f"{KEYS[self.type][attr]} {show(attr, old)} -> {show(attr, new)}"
                for attr, (old, new) in self.changes.items()
            ]
            return f"~ {self.type} {self.name}: {', '.join(parts)}"
        if self.retired_backups is not None:
            return (
                f"- source {self.name} (retired: disabled, its {self.retired_backups} "
                "backup(s) and history kept)"
            )
        return f"- {self.type} {self.name}"

    def to_dict(self) -> dict:
        """Return the JSON form: op, type, name and {file key: [old, new]} in file form."""
        data = {
            "op": self.op,
            "type": self.type,
            "name": self.name,
            "changes": {
                KEYS[self.type].get(attr, attr): [file_value(attr, old), file_value(attr, new)]
                for attr, (old, new) in self.changes.items()
            },
        }
        if self.retired_backups is not None:
            data["retired"] = True
            data["backups"] = self.retired_backups
        return data


@dataclass
class FleetPlan:
    """What an apply would write, fully validated."""

    fleet: FleetFile
    sha256: str
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    new_policies: list[Policy] = field(default_factory=list)
    changed_policies: list[Policy] = field(default_factory=list)
    removed_policies: list[Policy] = field(default_factory=list)
    new_sources: list[Source] = field(default_factory=list)
    changed_sources: list[Source] = field(default_factory=list)
    removed_sources: list[Source] = field(default_factory=list)
    retired_sources: list[Source] = field(default_factory=list)
    # New and changed sources by name -> the policy they must point at (None: none).
    source_policies: dict[str, str | None] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Return how many objects of each type are created, changed, removed, retired."""
        counts = {
            op: {"policies": 0, "sources": 0} for op in ("created", "changed", "removed", "retired")
        }
        names = {"+": "created", "~": "changed", "-": "removed"}
        for change in self.changes:
            op = "retired" if change.retired_backups is not None else names[change.op]
            counts[op]["policies" if change.type == "policy" else "sources"] += 1
        return counts


def show(attr: str, value: Any) -> str:
    """Return a value as a plan line shows it: durations as `2h`, texts quoted if needed."""
    value = file_value(attr, value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in ",'\"" for c in value)
        return value if plain else repr(value)
    return json.dumps(value, ensure_ascii=False)


def file_value(attr: str, value: Any) -> Any:
    """Return a catalog value in the file's form (durations as text such as `2h`)."""
    if attr in DURATION_ATTRS and value is not None:
        return exact_duration(value)
    if attr == "notify" and isinstance(value, str):
        return value.split(",") if value else []
    if attr == "recipients":
        return value.splitlines()
    return value


def _policy_default(attr: str) -> Any:
    return Policy._meta.get_field(attr).get_default()


def _source_default(attr: str) -> Any:
    if attr == "policy":
        return None
    return Source._meta.get_field(attr).get_default()


def _refuse(fleet: FleetFile, item: Item, what: str, attr: str | None, message: str):
    key = KEYS[what].get(attr) if attr else None
    field_text = f" {key}:" if key else ""
    line = item.line_of(attr) if attr else item.line
    return FleetRefused(f"{fleet.where(line)}: {what} {item.name!r}:{field_text} {message}")


def _validate(fleet: FleetFile, item: Item, what: str, obj, exclude=()) -> None:
    # Uniqueness is checked against the catalog loaded once, not with a query per object.
    try:
        obj.full_clean(exclude=list(exclude), validate_unique=False, validate_constraints=False)
    except ValidationError as error:
        errors = error.message_dict if hasattr(error, "error_dict") else {"__all__": error.messages}
        attr, messages = next(iter(errors.items()))
        if attr == "__all__":
            attr = None
        raise _refuse(fleet, item, what, attr, " ".join(messages)) from None


def fleet_sha256(data: bytes) -> str:
    """Return the sha256 of a fleet file's bytes, as recorded in the audit log."""
    return hashlib.sha256(data).hexdigest()


def fleet_plan(
    fleet: FleetFile, *, sha256: str = "", prune: bool = False, prune_with_backups: bool = False
) -> FleetPlan:
    """Return the validated plan that makes the catalog match `fleet`; raise FleetRefused.

    `prune` removes what a present section no longer lists; a source with runs is then
    refused unless `prune_with_backups`, which retires it (see the module's docstring).
    """
    prune = prune or prune_with_backups
    plan = FleetPlan(fleet=fleet, sha256=sha256)
    policies = {policy.name: policy for policy in Policy.objects.all()}
    policy_names = {policy.pk: policy.name for policy in policies.values()}
    sources = {source.name: source for source in Source.objects.all()}

    if fleet.policies is not None:
        _plan_policies(plan, fleet, policies)
        known_policies = set(fleet.policies)
        missing_hint = "declare it under policies"
    else:
        known_policies = set(policies)
        missing_hint = "create it first, or declare it under policies"

    remaining = dict(sources)
    if fleet.sources is not None:
        for item in fleet.sources.values():
            wanted = item.values.get("policy")
            if wanted is not None and wanted not in known_policies:
                raise _refuse(
                    fleet, item, "source", "policy", f"unknown policy {wanted!r}; {missing_hint}."
                )
        if prune:
            _plan_source_removals(plan, fleet, sources, prune_with_backups)
            for source in plan.removed_sources:
                del remaining[source.name]
        _plan_sources(plan, fleet, sources, policy_names, remaining)

    if prune and fleet.policies is not None:
        _plan_policy_removals(plan, fleet, policies, policy_names, remaining)
    return plan


def _plan_policies(plan: FleetPlan, fleet: FleetFile, policies: dict[str, Policy]) -> None:
    for item in fleet.policies.values():
        wanted = {attr: item.values.get(attr, _policy_default(attr)) for attr in POLICY_ATTRS}
        current = policies.get(item.name)
        if current is None:
            policy = Policy(name=item.name, **wanted)
            _validate(fleet, item, "policy", policy)
            plan.new_policies.append(policy)
            plan.changes.append(
                Change("+", "policy", item.name, {a: (None, v) for a, v in wanted.items()})
            )
            continue
        diff = {
            attr: (getattr(current, attr), value)
            for attr, value in wanted.items()
            if getattr(current, attr) != value
        }
        if not diff:
            continue
        for attr, (_, value) in diff.items():
            setattr(current, attr, value)
        _validate(fleet, item, "policy", current)
        plan.changed_policies.append(current)
        plan.changes.append(Change("~", "policy", item.name, diff))


def _plan_sources(
    plan: FleetPlan,
    fleet: FleetFile,
    sources: dict[str, Source],
    policy_names: dict[int, str],
    remaining: dict[str, Source],
) -> None:
    slugs = {source.slug: source.name for source in remaining.values()}
    for item in fleet.sources.values():
        wanted = {attr: item.values.get(attr, _source_default(attr)) for attr in SOURCE_ATTRS}
        current = sources.get(item.name)
        if current is None:
            slug = item.values.get("slug") or slugify(item.name)[:100]
            if slug in slugs:
                raise _refuse(
                    fleet,
                    item,
                    "source",
                    "slug" if "slug" in item.values else None,
                    f"its archive folder name {slug!r} is already taken by source "
                    f"{slugs[slug]!r}; give it another `slug:`.",
                )
            source = Source(name=item.name, slug=slug, **_without_policy(wanted))
            _validate(fleet, item, "source", source, exclude=["policy"])
            slugs[source.slug] = item.name
            plan.new_sources.append(source)
            plan.source_policies[item.name] = wanted["policy"]
            plan.changes.append(
                Change("+", "source", item.name, {a: (None, v) for a, v in wanted.items()})
            )
            continue
        given_slug = item.values.get("slug")
        if given_slug is not None and given_slug != current.slug:
            raise _refuse(
                fleet,
                item,
                "source",
                "slug",
                f"the slug is {current.slug!r} and names the source's archive folder; it "
                "cannot change here (rename the folder and change it in the admin).",
            )
        old = {attr: getattr(current, attr) for attr in SOURCE_ATTRS if attr != "policy"}
        old["policy"] = policy_names.get(current.policy_id)
        diff = {attr: (old[attr], value) for attr, value in wanted.items() if old[attr] != value}
        if not diff:
            continue
        for attr, (_, value) in diff.items():
            if attr != "policy":
                setattr(current, attr, value)
        _validate(fleet, item, "source", current, exclude=["policy"])
        plan.changed_sources.append(current)
        plan.source_policies[item.name] = wanted["policy"]
        plan.changes.append(Change("~", "source", item.name, diff))


def _without_policy(values: dict[str, Any]) -> dict[str, Any]:
    return {attr: value for attr, value in values.items() if attr != "policy"}


def _plan_source_removals(
    plan: FleetPlan, fleet: FleetFile, sources: dict[str, Source], prune_with_backups: bool
) -> None:
    gone = {name: source for name, source in sources.items() if name not in fleet.sources}
    if not gone:
        return
    history = {
        row["source_id"]: row
        for row in Run.objects.filter(source_id__in=[s.pk for s in gone.values()])
        .values("source_id")
        .annotate(
            runs=Count("pk"),
            backups=Count("pk", filter=Q(kind=Run.Kind.BACKUP, status__in=Run.GOOD)),
        )
    }
    for name in sorted(gone):
        source = gone[name]
        runs = history.get(source.pk)
        if runs is None:
            plan.removed_sources.append(source)
            plan.changes.append(Change("-", "source", name))
        elif not source.enabled:
            continue  # retired earlier (or disabled by hand): its backups stay, nothing to do
        elif prune_with_backups:
            plan.retired_sources.append(source)
            plan.changes.append(
                Change("-", "source", name, {"enabled": (True, False)}, runs["backups"])
            )
        else:
            raise FleetRefused(
                f"{fleet.name}: source {name!r} is not in the file but has "
                f"{runs['backups']} backup(s) and {runs['runs']} run(s); --prune never "
                "deletes those. Put it back in the file, or use --prune-with-backups to "
                "retire it (disabled, backups kept)."
            )


def _plan_policy_removals(
    plan: FleetPlan,
    fleet: FleetFile,
    policies: dict[str, Policy],
    policy_names: dict[int, str],
    remaining: dict[str, Source],
) -> None:
    in_file = set(fleet.sources or ())
    users: dict[str, list[str]] = {}
    for source in remaining.values():
        if source.name not in in_file and source.policy_id is not None:
            users.setdefault(policy_names[source.policy_id], []).append(source.name)
    for name in sorted(set(policies) - set(fleet.policies)):
        if name in users:
            holders = ", ".join(sorted(users[name]))
            plan.notes.append(
                f"policy {name} is kept: source(s) outside the file still use it ({holders})"
            )
            continue
        plan.removed_policies.append(policies[name])
        plan.changes.append(Change("-", "policy", name))


def fleet_apply(plan: FleetPlan, *, actor=None) -> None:
    """Write the plan in one transaction, sync the schedules and record it in the audit log.

    Raise FleetRefused (nothing written) when the catalog changed since the plan in a way
    that forbids it: a name taken by another apply running at the same time, a backup
    started meanwhile of a source the plan deletes.
    """
    now = timezone.now()
    try:
        with transaction.atomic():
            _write(plan, now)
            schedule_sync_all(now=now)
            AuditEvent.objects.bulk_create(_audit_events(plan, actor, now))
    except ProtectedError:
        raise FleetRefused(
            f"{plan.fleet.name}: a source to delete got a run while applying; nothing was "
            "changed, run the apply again."
        ) from None
    except IntegrityError as error:
        raise FleetRefused(
            f"{plan.fleet.name}: the catalog changed while applying ({error}); nothing was "
            "changed, run the apply again."
        ) from None


def _write(plan: FleetPlan, now) -> None:
    Policy.objects.bulk_create(plan.new_policies)
    for policy in plan.changed_policies:
        policy.updated_at = now
    if plan.changed_policies:
        Policy.objects.bulk_update(plan.changed_policies, [*POLICY_ATTRS, "updated_at"])
    policy_ids = dict(Policy.objects.values_list("name", "pk"))
    for policy in plan.new_policies:
        policy.pk = policy_ids[policy.name]

    removed = [source.pk for source in plan.removed_sources]
    if removed:
        Source.objects.filter(pk__in=removed).delete()
    retired = [source.pk for source in plan.retired_sources]
    if retired:
        Source.objects.filter(pk__in=retired).update(enabled=False, updated_at=now)
    for source in [*plan.new_sources, *plan.changed_sources]:
        policy = plan.source_policies[source.name]
        source.policy_id = policy_ids[policy] if policy is not None else None
        source.updated_at = now
    Source.objects.bulk_create(plan.new_sources)
    if any(source.pk is None for source in plan.new_sources):
        # Only databases that cannot return ids from a bulk insert get here.
        ids = dict(Source.objects.values_list("name", "pk"))
        for source in plan.new_sources:
            source.pk = ids[source.name]
    if plan.changed_sources:
        fields = [attr for attr in SOURCE_ATTRS if attr != "policy"]
        Source.objects.bulk_update(plan.changed_sources, [*fields, "policy", "updated_at"])
    if plan.removed_policies:
        Policy.objects.filter(pk__in=[policy.pk for policy in plan.removed_policies]).delete()


def _audit_events(plan: FleetPlan, actor, now) -> list[AuditEvent]:
    user = actor if getattr(actor, "is_authenticated", False) else None
    who = {"actor": user, "actor_name": user.get_username() if user else "system"}
    objects = {
        ("policy", obj.name): obj
        for obj in [*plan.new_policies, *plan.changed_policies, *plan.removed_policies]
    }
    objects.update(
        {
            ("source", obj.name): obj
            for group in (
                plan.new_sources,
                plan.changed_sources,
                plan.removed_sources,
                plan.retired_sources,
            )
            for obj in group
        }
    )
    removed = {("source", s.name) for s in plan.removed_sources}
    events = [
        AuditEvent(
            **who,
            at=now,
            action="fleet.apply",
            outcome=AuditEvent.Outcome.SUCCEEDED,
            object_repr=plan.fleet.name[:300],
            detail={
                "file": plan.fleet.name,
                "sha256": plan.sha256,
                "counts": plan.counts,
            },
        )
    ]
    verbs = {"+": "create", "~": "change", "-": "delete"}
    for change in plan.changes:
        obj = objects[(change.type, change.name)]
        verb = "change" if change.retired_backups is not None else verbs[change.op]
        is_source = change.type == "source" and (change.type, change.name) not in removed
        events.append(
            AuditEvent(
                **who,
                at=now,
                action=f"{change.type}.{verb}",
                outcome=AuditEvent.Outcome.SUCCEEDED,
                object_type=change.type,
                object_id=str(obj.pk),
                object_repr=change.name[:300],
                source=obj if is_source else None,
                detail={
                    "changes": {attr: list(pair) for attr, pair in change.changes.items()},
                    "fleet_sha256": plan.sha256,
                },
            )
        )
    return events


def fleet_export() -> str:
    """Return the catalog's policies and sources as a fleet file, fields at their default
    left out, objects sorted by name, so that applying it changes nothing."""
    policies = {}
    for policy in Policy.objects.order_by("name"):
        policies[policy.name] = {
            KEYS["policy"][attr]: file_value(attr, getattr(policy, attr))
            for attr in POLICY_ATTRS
            if getattr(policy, attr) != _policy_default(attr)
        }
    sources = {}
    for source in Source.objects.select_related("policy").order_by("name"):
        policy = source.policy.name if source.policy_id else None
        values = {
            attr: policy if attr == "policy" else getattr(source, attr) for attr in SOURCE_ATTRS
        }
        fields = {
            KEYS["source"][attr]: file_value(attr, value)
            for attr, value in values.items()
            if attr in ("kind", "location") or value != _source_default(attr)
        }
        if source.slug != slugify(source.name)[:100]:
            fields["slug"] = source.slug
        sources[source.name] = fields
    return dump_fleet({"policies": policies, "sources": sources})


def fleet_write(path: Path, text: str) -> None:
    """Replace the file `path` with the fleet file `text` atomically.

    Raise FleetRefused, saying why, when it cannot be written.
    """
    try:
        write_atomic(path, text.encode())
    except FileExistsError as error:
        raise FleetRefused(
            f"Cannot write {path}: {error.filename} exists (left by an export that was "
            "interrupted, or one running now); remove it and export again."
        ) from None
    except (OSError, EngineError) as error:
        raise FleetRefused(f"Cannot write {path}: {getattr(error, 'strerror', error)}.") from None


def fleet_load(data: bytes, name: str) -> FleetFile:
    """Read a fleet file's bytes (`name` says where they came from, for the messages).

    Raise FleetRefused naming the line and the problem when it is not a valid fleet file.
    """
    try:
        return load_fleet(data, name)
    except FleetFileError as error:
        raise FleetRefused(str(error)) from None
