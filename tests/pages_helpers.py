"""Builders for page tests: sources with run histories and catalogued manifests."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from backups.models import Manifest, ManifestDir, ManifestEntry, Policy, Run, Source
from backups.services.manifests import name_index_add
from backups.services.standing import standing_refresh

_counter = {"n": 0}


def digest(text: str) -> bytes:
    """Return a deterministic 32-byte hash standing for a file's content."""
    return hashlib.sha256(text.encode()).digest()


def make_policy(name="hourly", **fields) -> Policy:
    values = {"schedule": "0 * * * *", "rpo_s": 7200, "rto_s": 1800, "keep_last": 3}
    values.update(fields)
    return Policy.objects.create(name=name, **values)


def make_source(name: str, *, policy=None, kind="directory", location=None, owner="") -> Source:
    return Source.objects.create(
        name=name,
        slug=name,
        kind=kind,
        location=location or f"/srv/{name}",
        policy=policy,
        owner=owner,
    )


def make_run(source: Source, *, kind="backup", status="succeeded", ago_s=3600, took_s=30, **fields):
    """Create a finished (or active) run that started `ago_s` seconds ago."""
    now = timezone.now()
    started = now - timedelta(seconds=ago_s)
    active = status in Run.ACTIVE
    values = {
        "source": source,
        "kind": kind,
        "status": status,
        "queued_at": started,
        "started_at": None if status == "queued" else started,
        "finished_at": None if active else started + timedelta(seconds=took_s),
        "exclusive": kind == "backup",
    }
    if kind == "backup" and status in Run.GOOD:
        _counter["n"] += 1
        values.update(
            # In the source's folder, where restores, verifications and prunes look.
            archive=str(settings.ARCHIVE_ROOT / source.slug / f"{_counter['n']}.tar.zst"),
            size=1000 + _counter["n"],
            sha256=hashlib.sha256(str(_counter["n"]).encode()).hexdigest(),
            payload_bytes=5000,
            payload_files=3,
        )
    values.update(fields)
    run = Run.objects.create(**values)
    # As the services do when a run ends (history older than the newest backup included).
    standing_refresh(source.pk, since=started)
    return run


def make_manifest(run: Run, files: dict[str, str | None]) -> Manifest:
    """Catalogue `files` (path -> content, None for a folder) as `run`'s manifest."""
    folders = {""}
    for path, content in files.items():
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folders.add("/".join(parts[:depth]))
        if content is None:
            folders.add(path)
    manifest = Manifest.objects.create(
        run=run,
        path=f"/var/archives/{run.pk}.manifest.json",
        files=sum(1 for c in files.values() if c is not None),
        bytes=sum(len(c) for c in files.values() if c is not None),
    )
    dirs = {
        path: ManifestDir.objects.create(manifest=manifest, path=path) for path in sorted(folders)
    }
    entries = []
    for folder in sorted(folders - {""}):
        parent, _, name = folder.rpartition("/")
        entries.append(ManifestEntry(directory=dirs[parent], name=name, type="d", mode=0o755))
    for path, content in files.items():
        if content is None:
            continue
        parent, _, name = path.rpartition("/")
        entries.append(
            ManifestEntry(
                directory=dirs[parent],
                name=name,
                type="f",
                size=len(content),
                mode=0o644,
                mtime=1_700_000_000,
                sha256=digest(content),
            )
        )
    ManifestEntry.objects.bulk_create(entries)
    name_index_add(manifest)
    manifest.entries = len(entries)
    manifest.save(update_fields=["entries"])
    return manifest
