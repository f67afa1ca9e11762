"""Fleet as code: bring the catalog in line with a fleet file, and write the catalog as one.

`fleet_plan` reads the catalog once, validates every object the file creates or changes
(`full_clean`, references by name, folder names) and returns the plan; nothing is written
until everything is valid. `fleet_apply` then writes the plan in one transaction with bulk
statements, so the number of queries does not grow with the number of sources, and records
it in the audit log. `fleet_export` writes the catalog in the same format.

Removal needs `prune`. A source that has runs is never deleted: its backups stay
restorable and its history stays in the reports. With `prune_with_backups` such a source is
retired instead: disabled (so its schedule goes), its policy and backups kept, so
retention (`prune`) goes on thinning them; later applies leave a disabled source that is
not in the file alone. A policy that a source outside the file still uses is kept, with a
note, and so is a storage that a policy outside the file still names. A storage that holds
archives is never deleted, and never moved (see `Storage.clean`).

A policy names storages by name: `storage` (None: ARCHIVE_ROOT), `archive_to` and the sorted
tuple `copy_to`. The plan compares and shows those names; the ids are bound when written, as
a new storage has none before.
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
    STORAGE_FIELDS,
    VERSION,
    FleetFile,
    FleetFileError,
    Item,
    dump_fleet,
    fields_of,
    load_fleet,
)
from backups.fields import exact_duration
from backups.models import DEFAULT_STORAGE_NAME, AuditEvent, Copy, Policy, Run, Source, Storage
from backups.services.schedules import schedule_sync_all
from backups.services.storages import StorageRefused, parse_s3_url

DURATION_ATTRS = {
    "rpo_s",
    "rto_s",
    "drill_every_s",
    "run_timeout_s",
    "full_every_s",
    "differential_every_s",
    "archive_after_s",
}
# Policy fields that name storages, and their values when the file names none.
REF_DEFAULTS = {"storage": None, "archive_to": None, "copy_to": ()}
# The slug is not compared like the others: it names the archive folder and never changes.
SOURCE_ATTRS = [spec.attr for spec in SOURCE_FIELDS.values() if spec.attr != "slug"]
STORAGE_ATTRS = [spec.attr for spec in STORAGE_FIELDS.values()]
KEYS = {
    "storage": {spec.attr: spec.key for spec in STORAGE_FIELDS.values()},
    "policy": {spec.attr: spec.key for spec in POLICY_FIELDS.values()},
    "source": {spec.attr: spec.key for spec in SOURCE_FIELDS.values()},
}
TYPES = {"storage": "storages", "policy": "policies", "source": "sources"}


def policy_attrs(version: int) -> list[str]:
    """Return the policy attributes a file of `version` manages."""
    return [spec.attr for spec in fields_of(POLICY_FIELDS, version)]


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
            if self.type == "storage":
                new = {attr: new for attr, (_, new) in self.changes.items()}
                return f"+ storage {self.name} ({new['kind']} {new['url'] or new['path']})"
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
    new_storages: list[Storage] = field(default_factory=list)
    changed_storages: list[Storage] = field(default_factory=list)
    removed_storages: list[Storage] = field(default_factory=list)
    new_policies: list[Policy] = field(default_factory=list)
    changed_policies: list[Policy] = field(default_factory=list)
    removed_policies: list[Policy] = field(default_factory=list)
    new_sources: list[Source] = field(default_factory=list)
    changed_sources: list[Source] = field(default_factory=list)
    removed_sources: list[Source] = field(default_factory=list)
    retired_sources: list[Source] = field(default_factory=list)
    # New and changed sources by name -> the policy they must point at (None: none).
    source_policies: dict[str, str | None] = field(default_factory=dict)
    # New and changed policies by name -> the storages they name (version 2 files).
    policy_refs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Return how many objects of each type are created, changed, removed, retired."""
        counts = {
            op: dict.fromkeys(TYPES.values(), 0)
            for op in ("created", "changed", "removed", "retired")
        }
        names = {"+": "created", "~": "changed", "-": "removed"}
        for change in self.changes:
            op = "retired" if change.retired_backups is not None else names[change.op]
            counts[op][TYPES[change.type]] += 1
        return counts


def show(attr: str, value: Any) -> str:
    """Return a value as a plan line shows it: durations as `2h`, texts quoted if needed."""
    value = file_value(attr, value)
    if value is None:
        return DEFAULT_STORAGE_NAME if attr == "storage" else "none"
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
    if attr == "copy_to":
        return list(value)
    return value


def _policy_default(attr: str) -> Any:
    if attr in REF_DEFAULTS:
        return REF_DEFAULTS[attr]
    return Policy._meta.get_field(attr).get_default()


def _storage_default(attr: str) -> Any:
    return "" if attr == "url" else Storage._meta.get_field(attr).get_default()


def _storage_values(storage: Storage) -> dict[str, Any]:
    """Return a storage's values by file attribute (`url` for its bucket and prefix)."""
    return {
        attr: storage.url if attr == "url" else getattr(storage, attr) for attr in STORAGE_ATTRS
    }


def _policy_values(
    policy: Policy, attrs: list[str], storage_names: dict[int, str], copies: dict[int, tuple]
) -> dict[str, Any]:
    """Return a policy's values by attribute, the storages it names by name."""
    values = {}
    for attr in attrs:
        if attr in ("storage", "archive_to"):
            values[attr] = storage_names.get(getattr(policy, f"{attr}_id"))
        elif attr == "copy_to":
            values[attr] = copies.get(policy.pk, ())
        else:
            values[attr] = getattr(policy, attr)
    return values


def _copy_targets() -> dict[int, tuple[str, ...]]:
    """Return each policy's copy-to storages by name, sorted, with one query."""
    targets: dict[int, list[str]] = {}
    rows = Policy.copy_to.through.objects.values_list("policy_id", "storage__name")
    for policy_id, name in rows:
        targets.setdefault(policy_id, []).append(name)
    return {policy_id: tuple(sorted(names)) for policy_id, names in targets.items()}


def _source_default(attr: str) -> Any:
    if attr == "policy":
        return None
    return Source._meta.get_field(attr).get_default()


def _refuse(fleet: FleetFile, item: Item, what: str, attr: str | None, message: str):
    if what == "storage" and attr in ("bucket", "prefix"):
        attr = "url"  # the file gives both as one URL
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
    # A version 1 file never names a storage.
    storages = {s.name: s for s in Storage.objects.all()} if fleet.version >= 2 else {}
    policies = {policy.name: policy for policy in Policy.objects.all()}
    policy_names = {policy.pk: policy.name for policy in policies.values()}
    sources = {source.name: source for source in Source.objects.all()}

    if fleet.storages is not None:
        _plan_storages(plan, fleet, storages)
    if fleet.policies is not None:
        _plan_policies(plan, fleet, policies, storages)
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
    if prune and fleet.storages is not None:
        _plan_storage_removals(plan, fleet, storages, policies)
    return plan


def _plan_storages(plan: FleetPlan, fleet: FleetFile, storages: dict[str, Storage]) -> None:
    for item in fleet.storages.values():
        wanted = {attr: item.values.get(attr, _storage_default(attr)) for attr in STORAGE_ATTRS}
        if wanted["kind"] == Storage.Kind.S3 and not wanted["url"]:
            raise _refuse(fleet, item, "storage", None, "an S3 storage needs url: s3://BUCKET.")
        try:
            bucket, prefix = parse_s3_url(wanted["url"]) if wanted["url"] else ("", "")
        except StorageRefused as error:
            raise _refuse(fleet, item, "storage", "url", str(error)) from None
        place = {"bucket": bucket, "prefix": prefix}
        current = storages.get(item.name)
        if current is None:
            storage = Storage(name=item.name, **place, **_without(wanted, "url"))
            _validate(fleet, item, "storage", storage)
            plan.new_storages.append(storage)
            plan.changes.append(
                Change("+", "storage", item.name, {a: (None, v) for a, v in wanted.items()})
            )
            continue
        old = _storage_values(current)
        diff = {attr: (old[attr], value) for attr, value in wanted.items() if old[attr] != value}
        if not diff:
            continue
        for attr, value in {**_without(wanted, "url"), **place}.items():
            setattr(current, attr, value)
        # Storage.clean refuses to move a storage under the archives it holds.
        _validate(fleet, item, "storage", current)
        plan.changed_storages.append(current)
        plan.changes.append(Change("~", "storage", item.name, diff))


def _plan_policies(
    plan: FleetPlan, fleet: FleetFile, policies: dict[str, Policy], storages: dict[str, Storage]
) -> None:
    attrs = policy_attrs(fleet.version)
    names = {storage.pk: storage.name for storage in storages.values()}
    copies = _copy_targets() if "copy_to" in attrs else {}
    # Stand-in ids for the storages the file creates, so that the rules comparing a
    # policy's storages by id (Policy.clean, check_copy_to) can run before they exist.
    ids = {name: pk for pk, name in names.items()}
    ids.update({s.name: -index for index, s in enumerate(plan.new_storages, 1)})
    known = set(fleet.storages) if fleet.storages is not None else set(storages)
    for item in fleet.policies.values():
        wanted = {attr: item.values.get(attr, _policy_default(attr)) for attr in attrs}
        if wanted.get("storage") == DEFAULT_STORAGE_NAME:
            wanted["storage"] = None
        _check_storage_names(fleet, item, wanted, known)
        current = policies.get(item.name)
        if current is None:
            policy = Policy(name=item.name, **_without(wanted, *REF_DEFAULTS))
            _bind_storages(plan, fleet, item, policy, wanted, ids)
            plan.new_policies.append(policy)
            plan.changes.append(
                Change("+", "policy", item.name, {a: (None, v) for a, v in wanted.items()})
            )
            continue
        old = _policy_values(current, attrs, names, copies)
        diff = {attr: (old[attr], value) for attr, value in wanted.items() if old[attr] != value}
        if not diff:
            continue
        for attr, (_, value) in diff.items():
            if attr not in REF_DEFAULTS:
                setattr(current, attr, value)
        _bind_storages(plan, fleet, item, current, wanted, ids)
        plan.changed_policies.append(current)
        plan.changes.append(Change("~", "policy", item.name, diff))


def _check_storage_names(fleet: FleetFile, item: Item, wanted: dict, known: set[str]) -> None:
    """Refuse a policy naming a storage that is not there (after the apply)."""
    hint = (
        "declare it under storages"
        if fleet.storages is not None
        else "add it with `storage add` first, or declare it under storages"
    )
    if "storage" not in wanted:
        return  # a version 1 file leaves a policy's storages as they are
    for attr in REF_DEFAULTS:
        for name in wanted[attr] if attr == "copy_to" else [wanted[attr]]:
            if name is None or name in known:
                continue
            if name == DEFAULT_STORAGE_NAME:
                raise _refuse(
                    fleet,
                    item,
                    "policy",
                    attr,
                    f"{DEFAULT_STORAGE_NAME!r} (ARCHIVE_ROOT) is where backups are written; "
                    "name a storage apart from it.",
                )
            raise _refuse(fleet, item, "policy", attr, f"unknown storage {name!r}; {hint}.")


def _bind_storages(
    plan: FleetPlan, fleet: FleetFile, item: Item, policy: Policy, wanted: dict, ids
) -> None:
    """Point `policy` at its storages (stand-in ids for new ones) and validate it."""
    if "storage" in wanted:
        plan.policy_refs[item.name] = {attr: wanted[attr] for attr in REF_DEFAULTS}
        policy.storage_id = ids.get(wanted["storage"])
        policy.archive_to_id = ids.get(wanted["archive_to"])
    _validate(fleet, item, "policy", policy, exclude=list(REF_DEFAULTS))
    if "copy_to" in wanted:
        try:
            Policy.check_copy_to(policy.storage_id, [ids[name] for name in wanted["copy_to"]])
        except ValidationError as error:
            raise _refuse(fleet, item, "policy", "copy_to", " ".join(error.messages)) from None


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
            source = Source(name=item.name, slug=slug, **_without(wanted, "policy"))
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


def _without(values: dict[str, Any], *attrs: str) -> dict[str, Any]:
    return {attr: value for attr, value in values.items() if attr not in attrs}


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


def _plan_storage_removals(
    plan: FleetPlan, fleet: FleetFile, storages: dict[str, Storage], policies: dict[str, Policy]
) -> None:
    gone = {name: storage for name, storage in storages.items() if name not in fleet.storages}
    if not gone:
        return
    # Policies that stay and that the file does not manage keep naming their storages.
    managed = set(fleet.policies or ()) | {policy.name for policy in plan.removed_policies}
    copies = _copy_targets()
    users: dict[int, list[str]] = {}
    for policy in policies.values():
        if policy.name in managed:
            continue
        named = {policy.storage_id, policy.archive_to_id}
        named.update(s.pk for s in storages.values() if s.name in copies.get(policy.pk, ()))
        for pk in named - {None}:
            users.setdefault(pk, []).append(policy.name)
    ids = [storage.pk for storage in gone.values()]
    runs = dict(
        Run.objects.filter(storage_id__in=ids)
        .values("storage_id")
        .annotate(n=Count("pk"))
        .values_list("storage_id", "n")
    )
    held = dict(
        Copy.objects.filter(storage_id__in=ids)
        .values("storage_id")
        .annotate(n=Count("pk"))
        .values_list("storage_id", "n")
    )
    for name in sorted(gone):
        storage = gone[name]
        if storage.pk in users:
            holders = ", ".join(sorted(users[storage.pk]))
            plan.notes.append(
                f"storage {name} is kept: policy(ies) outside the file still name it ({holders})"
            )
            continue
        count = runs.get(storage.pk, 0) + held.get(storage.pk, 0)
        if count:
            raise FleetRefused(
                f"{fleet.name}: storage {name!r} is not in the file but {count} backup(s), "
                "copies or runs are recorded in it; --prune never deletes a storage that "
                "holds archives. Put it back in the file; it can go once retention has "
                "removed them (`storage list` shows what it holds)."
            )
        plan.removed_storages.append(storage)
        plan.changes.append(Change("-", "storage", name))


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
            f"{plan.fleet.name}: a source or storage to delete got a run while applying; "
            "nothing was changed, run the apply again."
        ) from None
    except IntegrityError as error:
        raise FleetRefused(
            f"{plan.fleet.name}: the catalog changed while applying ({error}); nothing was "
            "changed, run the apply again."
        ) from None


def _write(plan: FleetPlan, now) -> None:
    # Storages are few: one statement each, so each new one has its id for the policies.
    for storage in [*plan.new_storages, *plan.changed_storages]:
        storage.save()
    storage_ids = {}
    if plan.policy_refs:
        storage_ids = dict(Storage.objects.values_list("name", "pk"))
    for policy in [*plan.new_policies, *plan.changed_policies]:
        refs = plan.policy_refs.get(policy.name)
        if refs is not None:
            policy.storage_id = storage_ids.get(refs["storage"])
            policy.archive_to_id = storage_ids.get(refs["archive_to"])
    Policy.objects.bulk_create(plan.new_policies)
    for policy in plan.changed_policies:
        policy.updated_at = now
    if plan.changed_policies:
        attrs = [attr for attr in policy_attrs(plan.fleet.version) if attr != "copy_to"]
        Policy.objects.bulk_update(plan.changed_policies, [*attrs, "updated_at"])
    policy_ids = dict(Policy.objects.values_list("name", "pk"))
    for policy in plan.new_policies:
        policy.pk = policy_ids[policy.name]
    _write_copy_targets(plan, policy_ids, storage_ids)

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
    if plan.removed_storages:
        Storage.objects.filter(pk__in=[storage.pk for storage in plan.removed_storages]).delete()


def _write_copy_targets(plan: FleetPlan, policy_ids: dict, storage_ids: dict) -> None:
    """Replace the copy-to storages of the policies the plan creates or changes."""
    through = Policy.copy_to.through
    ids = [policy_ids[name] for name in plan.policy_refs]
    through.objects.filter(policy_id__in=ids).delete()
    through.objects.bulk_create(
        through(policy_id=policy_ids[name], storage_id=storage_ids[storage])
        for name, refs in plan.policy_refs.items()
        for storage in refs["copy_to"]
    )


def _audit_events(plan: FleetPlan, actor, now) -> list[AuditEvent]:
    user = actor if getattr(actor, "is_authenticated", False) else None
    who = {"actor": user, "actor_name": user.get_username() if user else "system"}
    objects = {
        (kind, obj.name): obj
        for kind, group in (
            ("storage", [*plan.new_storages, *plan.changed_storages, *plan.removed_storages]),
            ("policy", [*plan.new_policies, *plan.changed_policies, *plan.removed_policies]),
        )
        for obj in group
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
    """Return the catalog's storages, policies and sources as a fleet file, fields at their
    default left out, objects sorted by name, so that applying it changes nothing."""
    storages = {}
    names = {}
    for storage in Storage.objects.order_by("name"):
        names[storage.pk] = storage.name
        storages[storage.name] = {
            KEYS["storage"][attr]: value
            for attr, value in _storage_values(storage).items()
            if attr == "kind" or value != _storage_default(attr)
        }
    attrs = policy_attrs(VERSION)
    copies = _copy_targets()
    policies = {}
    for policy in Policy.objects.order_by("name"):
        policies[policy.name] = {
            KEYS["policy"][attr]: file_value(attr, value)
            for attr, value in _policy_values(policy, attrs, names, copies).items()
            if value != _policy_default(attr)
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
    return dump_fleet({"storages": storages, "policies": policies, "sources": sources})


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
