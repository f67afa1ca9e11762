"""Storages: where archives live, ARCHIVE_ROOT by default, or a named folder or S3 bucket.

A policy names the storage its backups are written to; each backup run records the one it
used, so restores, verifications, prunes and the reaper read and remove in the right place
whatever the policy says later. The rows hold no secret: an S3 storage's credentials come
from the workers' environment when the storage is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from django.db import transaction
from django.db.models import Count, Sum

from backups.engine.errors import EngineError
from backups.models import DEFAULT_STORAGE_NAME, Run, Storage, default_storage


class StorageRefused(Exception):
    """A storage cannot be named or opened as asked; the message says why."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """Return the bucket and prefix of `s3://BUCKET[/PREFIX]`; raise StorageRefused."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise StorageRefused(f"{url!r} is not an S3 URL: give s3://BUCKET or s3://BUCKET/PREFIX.")
    return parts.netloc, parts.path.strip("/")


@transaction.atomic
def storage_create(
    *,
    name: str,
    kind: str,
    path: str = "",
    url: str = "",
    endpoint: str = "",
    region: str = "",
    credentials_env: str = "",
    keep: dict[str, int] | None = None,
) -> Storage:
    """Create a storage after validating it; raise StorageRefused or ValidationError.

    `keep` gives the storage its own retention rules for the copies it holds.
    """
    if Storage.objects.filter(name=name).exists():
        raise StorageRefused(f"A storage named {name!r} already exists.")
    if kind == Storage.Kind.S3:
        if path:
            raise StorageRefused("An S3 storage takes --url s3://BUCKET[/PREFIX], not --path.")
        if not url:
            raise StorageRefused("An S3 storage needs --url s3://BUCKET[/PREFIX].")
        bucket, prefix = parse_s3_url(url)
    else:
        if url or endpoint or region or credentials_env:
            raise StorageRefused(
                "A local storage takes only --path DIR (no --url, --endpoint, --region "
                "or --credentials-env)."
            )
        bucket, prefix = "", ""
    storage = Storage(
        name=name,
        kind=kind,
        path=path,
        bucket=bucket,
        prefix=prefix,
        endpoint=endpoint,
        region=region,
        credentials_env=credentials_env,
        **{f"keep_{rule}": count for rule, count in (keep or {}).items()},
    )
    storage.full_clean()
    storage.save()
    return storage


@transaction.atomic
def storage_set_retention(*, name: str, keep: dict[str, int]) -> tuple[Storage, dict]:
    """Give the storage `name` the keep rules `keep` (all 0 or empty: none of its own).

    Return the storage and `{field: [old, new]}`. Raise StorageRefused for ARCHIVE_ROOT,
    whose archives are the backups themselves and follow their policies.
    """
    if name in ("", DEFAULT_STORAGE_NAME):
        raise StorageRefused(
            f"The {DEFAULT_STORAGE_NAME!r} storage holds backups, not copies: its archives "
            "follow their policies' keep rules. Set rules on a storage that copies go to."
        )
    storage_named(name)  # the message naming the known storages
    storage = Storage.objects.select_for_update().get(name=name)
    return storage, storage.set_keep_rules(keep)


def storage_only_copies(storage: Storage) -> int:
    """Return how many restore points live only as copies in `storage`."""
    return Run.objects.restorable().filter(storage=storage, copy_only=True).count()


def storage_named(name: str | None) -> Storage | None:
    """Return the storage called `name` (None and "default": ARCHIVE_ROOT, as None).

    Raise StorageRefused naming the known storages when there is none of that name.
    """
    if name in (None, "", DEFAULT_STORAGE_NAME):
        return None
    storage = Storage.objects.filter(name=name).first()
    if storage is None:
        known = [DEFAULT_STORAGE_NAME, *Storage.objects.values_list("name", flat=True)]
        raise StorageRefused(f"No storage is named {name!r}; known: {', '.join(known)}.")
    return storage


def storage_open(storage: Storage | None):
    """Return the engine's storage of a row (None: ARCHIVE_ROOT); raise StorageRefused."""
    if storage is None:
        return default_storage()
    try:
        return storage.open()
    except EngineError as error:
        raise StorageRefused(f"Storage {storage.name!r}: {error}") from None


def storage_check(storage: Storage | None) -> str | None:
    """Write, read back and delete a probe object in `storage`; return what failed, or None.

    The outcome is recorded on the row and shown by `storage list`.
    """
    try:
        storage_open(storage).check()
    except StorageRefused as refused:
        problem = str(refused)
    except EngineError as error:
        problem = str(error)
    else:
        problem = None
    if storage is not None:
        storage.record_check(problem or "")
    return problem


@dataclass
class StorageRow:
    """One storage as `storage list` and the pages show it."""

    name: str
    kind: str
    location: str
    archives: int
    bytes: int
    checked_at: datetime | None
    check_error: str
    keep: dict[str, int] | None = None

    def to_dict(self) -> dict:
        """Return the JSON object of `storage list --json`."""
        return {
            "name": self.name,
            "kind": self.kind,
            "location": self.location,
            "archives": self.archives,
            "bytes": self.bytes,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "check_error": self.check_error or None,
            "keep": self.keep,
        }


def storage_rows() -> list[StorageRow]:
    """Return every storage, the default first, with its restorable archives and bytes."""
    totals = {
        row["storage_id"]: row
        for row in Run.objects.restorable()
        .exclude(archive="")
        .values("storage_id")
        .annotate(archives=Count("pk"), bytes=Sum("size"))
    }

    def row(storage_id, **fields) -> StorageRow:
        total = totals.get(storage_id, {})
        return StorageRow(
            archives=total.get("archives", 0), bytes=total.get("bytes") or 0, **fields
        )

    rows = [
        row(
            None,
            name=DEFAULT_STORAGE_NAME,
            kind=Storage.Kind.LOCAL,
            location=default_storage().describe(),
            checked_at=None,
            check_error="",
        )
    ]
    for storage in Storage.objects.all():
        rows.append(
            row(
                storage.pk,
                name=storage.name,
                kind=storage.kind,
                location=storage.location,
                checked_at=storage.checked_at,
                check_error=storage.check_error,
                keep=storage.keep_rules if storage.has_keep_rules else None,
            )
        )
    return rows
