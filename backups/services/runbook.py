"""A source's disaster-recovery runbook: assess, restore, verify, resume, with real numbers.

It states, for one source, the newest good restore points on each storage, the measured
restore time of the newest drill (the real RTO) against the target, the exact commands to
restore, from the dashboard and with plain tools, and the checks to run afterwards (the
policy's check queries). The dashboard shows it at `/sources/<slug>/runbook/`; after every
successful backup and drill it is also written as `RUNBOOK.md` beside the source's
archives, crash-safely like any archive file, so it is there when the dashboard is not.
Import and retention look only at their own file names and leave `RUNBOOK.md` alone.
"""

from __future__ import annotations

import functools
import logging
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.template import Context, Engine
from django.utils import timezone

from backups.engine.atomic import TMP_SUFFIX
from backups.engine.compression import GZIP, ZSTD, compression_of
from backups.engine.crypto import SUFFIX as AGE_SUFFIX
from backups.engine.errors import StorageError
from backups.engine.locations import parse_pod_path
from backups.engine.storage import LocalStorage
from backups.models import Run, Source
from backups.services.compliance import Standing, source_standing
from backups.services.formats import format_duration

logger = logging.getLogger(__name__)

RUNBOOK_NAME = "RUNBOOK.md"
POINTS = 3
# Times nobody measured: a person reading the page and deciding (assess), and telling the
# users and restarting what depends on the source (resume). Written as estimates.
ASSESS_S = 10 * 60
RESUME_S = 10 * 60
LOCAL_STORAGE = "local (ARCHIVE_ROOT)"


@dataclass
class RestorePoint:
    """A good backup to restore from, and its files."""

    run: Run
    storage: str
    archive: str
    folder: str

    @property
    def sha256_file(self) -> str:
        return f"{self.archive}.sha256"

    @property
    def manifest_file(self) -> str:
        return self.archive.split(".", 1)[0] + ".manifest.json"


@dataclass
class Step:
    """One step of the plan: what to do, how long it takes, and the commands."""

    name: str
    seconds: float | None
    measured: bool
    what: str
    commands: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def time(self) -> str:
        if self.seconds is None:
            return "unknown"
        prefix = "" if self.measured else "about "
        return prefix + format_duration(self.seconds)


@dataclass
class Runbook:
    """Everything the runbook page and RUNBOOK.md say about one source."""

    source: Source
    standing: Standing
    generated_at: datetime
    points: dict[str, list[RestorePoint]]
    steps: list[Step]
    dashboard_url: str

    @property
    def newest(self) -> RestorePoint | None:
        for points in self.points.values():
            if points:
                return points[0]
        return None

    @property
    def total_s(self) -> float | None:
        if any(step.seconds is None for step in self.steps):
            return None
        return sum(step.seconds for step in self.steps)

    @property
    def rto(self) -> str:
        return format_duration(self.standing.rto_s) if self.standing.rto_s else "none"

    @property
    def measured_rto(self) -> str:
        if self.standing.last_drill_s is None:
            return "never measured: no drill or restore has been timed"
        return (
            f"{format_duration(self.standing.last_drill_s)} "
            f"(measured {self.standing.last_drill_at:%Y-%m-%d %H:%M} UTC)"
        )


def _points(source: Source) -> dict[str, list[RestorePoint]]:
    runs = list(
        Run.objects.restorable()
        .filter(source=source)
        .exclude(archive="")
        .select_related("storage")
        .only(
            "pk", "source", "status", "started_at", "size", "sha256", "archive", "verified",
            "recipients", "storage__name", "level",
        )
        .order_by("-started_at", "-pk")[:POINTS]
    )  # fmt: skip
    points: dict[str, list[RestorePoint]] = {}
    for run in runs:
        run.source = source
        # An absolute path, or an s3://bucket/key address: the folder is all before the name.
        folder, _, name = run.archive.rpartition("/")
        where = f"storage {run.storage.name}" if run.storage_id else LOCAL_STORAGE
        points.setdefault(where, []).append(
            RestorePoint(run=run, storage=where, archive=name, folder=folder)
        )
    return points or {LOCAL_STORAGE: []}


def _decompress(archive: str) -> str:
    name = shlex.quote(archive)
    if archive.endswith(AGE_SUFFIX):
        # Encrypted: the identity (private key) file opens it, then as any archive.
        compressed = archive.removesuffix(AGE_SUFFIX)
        plain = _decompress(compressed).replace(shlex.quote(compressed), "-")
        return f"age -d -i key.txt < {name} | {plain.replace(' < -', '')}"
    compression = compression_of(archive)
    if compression == ZSTD:
        return f"zstd -d < {name}"
    if compression == GZIP:
        return f"gzip -d < {name}"
    return f"cat {name}"


def _plain_commands(source: Source, point: RestorePoint) -> list[tuple[str, list[str]]]:
    """Return the shell commands that restore `point` without this program, by kind."""
    q = shlex.quote
    location = source.location
    unpack = _decompress(point.archive)
    check = [f"cd {q(point.folder)}", f"sha256sum -c {q(point.sha256_file)}"]
    scratch = f"/tmp/restore-{source.slug}-{point.run.pk}"
    if source.kind == Source.Kind.DIRECTORY:
        restored = f"{location.rstrip('/')}.restored"
        if point.run.level != Run.Level.FULL:
            # A differential or incremental holds only what changed: its whole chain, the
            # full first, is extracted in order (the script needs sh, tar, zstd, jq).
            manifest = f"{point.archive.split('.', 1)[0]}.manifest.json"
            return [
                (
                    "Check every archive of the chain is intact",
                    [f"cd {q(point.folder)}", "sha256sum -c *.sha256"],
                ),
                (
                    f"Unpack the chain of this {point.run.level} beside the original "
                    "(scripts/restore-chain.sh, in the project's sources)",
                    [
                        f"mkdir -p {q(restored)}",
                        f"sh restore-chain.sh . {q(manifest)} {q(restored)}",
                    ],
                ),
                (
                    "Swap it in once checked (keep the broken copy until the service works)",
                    [
                        f"mv {q(location)} {q(location.rstrip('/') + '.broken')}",
                        f"mv {q(restored)} {q(location)}",
                    ],
                ),
            ]
        return [
            ("Check the archive is intact", check),
            (
                "Unpack it beside the original",
                [f"mkdir -p {q(restored)}", f"{unpack} | tar -xf - -C {q(restored)}"],
            ),
            (
                "Swap it in once checked (keep the broken copy until the service works)",
                [
                    f"mv {q(location)} {q(location.rstrip('/') + '.broken')}",
                    f"mv {q(restored)} {q(location)}",
                ],
            ),
        ]
    if source.kind == Source.Kind.SQLITE:
        member = Path(location).name
        restored = f"{scratch}/{member}"
        return [
            ("Check the archive is intact", check),
            (
                "Unpack the database snapshot",
                [f"mkdir -p {q(scratch)}", f"{unpack} | tar -xf - -C {q(scratch)}"],
            ),
            ("Check the snapshot", [f"sqlite3 {q(restored)} 'PRAGMA integrity_check'"]),
            (
                "Put it in place with the application stopped",
                [f"cp {q(location)} {q(location + '.broken')}", f"cp {q(restored)} {q(location)}"],
            ),
        ]
    if source.kind == Source.Kind.KUBERNETES:
        pod = parse_pod_path(location)
        container = f" -c {q(pod.container)}" if pod.container else ""
        return [
            ("Check the archive is intact", check),
            (
                "Stream it into the pod (tar there replaces files of the same name)",
                [
                    f"{unpack} | kubectl exec -i -n {q(pod.namespace)} {q(pod.pod)}{container} "
                    f"-- tar -xf - -C {q(pod.path)}"
                ],
            ),
        ]
    dump = f"{scratch}.pgdump"
    return [
        ("Check the archive is intact", check),
        (
            "Unpack the pg_dump custom-format dump",
            [f"{unpack} > {q(dump)}", f"pg_restore --list {q(dump)} | head"],
        ),
        (
            "Load it (the password comes from PGPASSWORD or a pgpass file)",
            [f"pg_restore --clean --if-exists --dbname {q(location)} {q(dump)}"],
        ),
    ]


def _check_commands(source: Source, point: RestorePoint | None) -> list[tuple[str, list[str]]]:
    q = shlex.quote
    checks: list[tuple[str, list[str]]] = []
    queries = source.policy.check_queries if source.policy_id else []
    if source.kind == Source.Kind.DIRECTORY and point is not None:
        manifest = f"{point.folder}/{point.manifest_file}"
        checks.append(
            (
                "Every restored file against its sha256 in the manifest",
                [
                    f'jq -r \'.entries[] | select(.type=="file") | "\\(.sha256)  \\(.path)"\' '
                    f"{q(manifest)} | (cd {q(source.location)} && sha256sum -c --quiet)"
                ],
            )
        )
    if source.kind == Source.Kind.SQLITE:
        commands = [f"sqlite3 {q(source.location)} 'PRAGMA integrity_check'"]
        commands += [
            f"sqlite3 {q(source.location)} {q(query.get('sql', ''))}"
            + (f"    # expect {query['expect']}" if query.get("expect") else "")
            for query in queries
        ]
        checks.append(("The database and the policy's check queries", commands))
    if source.kind == Source.Kind.POSTGRES and queries:
        checks.append(
            (
                "The policy's check queries",
                [
                    f"psql {q(source.location)} -c {q(query.get('sql', ''))}"
                    + (f"    # expect {query['expect']}" if query.get("expect") else "")
                    for query in queries
                ],
            )
        )
    return checks


def _verify_seconds(source: Source) -> float | None:
    """Return how long the newest passed verification (not a drill) of the source took."""
    row = (
        Run.objects.filter(
            source=source,
            kind=Run.Kind.VERIFY,
            drill=False,
            status__in=Run.GOOD,
            started_at__isnull=False,
            finished_at__isnull=False,
        )
        .order_by("-finished_at", "-pk")
        .values("started_at", "finished_at")
        .first()
    )
    return (row["finished_at"] - row["started_at"]).total_seconds() if row else None


def runbook_build(source: Source, *, now: datetime | None = None) -> Runbook:
    """Return the runbook of `source` as it stands now."""
    now = now or timezone.now()
    standing = source_standing(source, now=now)
    points = _points(source)
    newest = next((p[0] for p in points.values() if p), None)
    base = settings.DASHBOARD_URL
    restore_commands: list[tuple[str, list[str]]] = []
    if newest is not None:
        run_id = newest.run.pk
        restore_commands = [
            (
                "From the dashboard",
                [f"{base}/restore/?backup={run_id}" if base else f"/restore/?backup={run_id}"],
            ),
            (
                "From the command line, over the source (or --to a new place first)",
                [
                    f"python manage.py restore {run_id} --in-place --yes --wait",
                    f"python manage.py restore {run_id} --to TARGET --wait",
                ],
            ),
            *_plain_commands(source, newest),
        ]
    verify_s = _verify_seconds(source)
    steps = [
        Step(
            "Assess",
            ASSESS_S,
            False,
            "Confirm what broke and since when; pick the restore point from before it "
            "(the newest good one below, unless the damage is older).",
            [
                (
                    "The source's standing",
                    [f"python manage.py status | grep -F {shlex.quote(source.name)}"],
                )
            ],
        ),
        Step(
            "Restore",
            standing.last_drill_s,
            standing.last_drill_s is not None,
            "Restore the chosen point. The time is the newest drill's measured restore.",
            restore_commands,
        ),
        Step(
            "Verify",
            verify_s,
            verify_s is not None,
            "Check the restored data before anyone uses it. The time is the newest verification's.",
            _check_commands(source, newest),
        ),
        Step(
            "Resume",
            RESUME_S,
            False,
            "Restart what uses the source, tell its users, and take a fresh backup.",
            [("A fresh backup", [f"python manage.py backup {shlex.quote(source.name)} --wait"])],
        ),
    ]
    return Runbook(
        source=source,
        standing=standing,
        generated_at=now,
        points=points,
        steps=steps,
        dashboard_url=base,
    )


@functools.cache
def _engine() -> Engine:
    # RUNBOOK.md is written after every backup: the project's template engine would first
    # load every app's template tags (the admin's among them) for this one file.
    return Engine(
        dirs=settings.TEMPLATES[0]["DIRS"], libraries={"dash": "dashboard.templatetags.dash"}
    )


def runbook_markdown(runbook: Runbook) -> str:
    """Return the runbook as RUNBOOK.md says it."""
    return _engine().get_template("backups/RUNBOOK.md").render(Context({"book": runbook}))


def runbook_write(source: Source) -> Path:
    """Write RUNBOOK.md beside the source's archives, crash-safely; return its path."""
    text = runbook_markdown(runbook_build(source)).encode()
    policy = source.policy
    if policy is not None and policy.storage_id:
        # Beside the archives in the policy's storage, where they are when all else is gone.
        policy.storage.open().put_atomic(f"{source.slug}/{RUNBOOK_NAME}", text)
        return Path(f"{source.slug}/{RUNBOOK_NAME}")
    storage = LocalStorage(settings.ARCHIVE_ROOT)
    key = f"{source.slug}/{RUNBOOK_NAME}"
    try:
        storage.put_atomic(key, text)
    except StorageError:
        # A writer killed half-way left its temporary file; runbooks of a source are
        # written one at a time (after its backups), so it is dead: replace it.
        (settings.ARCHIVE_ROOT / source.slug / (RUNBOOK_NAME + TMP_SUFFIX)).unlink(missing_ok=True)
        storage.put_atomic(key, text)
    return settings.ARCHIVE_ROOT / source.slug / RUNBOOK_NAME


def runbook_after_run(run: Run) -> None:
    """Write the source's RUNBOOK.md after a good backup or drill."""
    good_backup = run.kind == Run.Kind.BACKUP and run.status in Run.GOOD
    good_drill = run.kind == Run.Kind.VERIFY and run.drill and run.status in Run.GOOD
    if good_backup or good_drill:
        runbook_write(run.source)
