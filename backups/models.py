"""The catalog: policies, sources, runs, manifests and the audit log.

The Run table is the truth about every backup, restore and verification; pages and
commands read it, never the queue's tables.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Concat, Greatest, Now
from django.utils import timezone
from django.utils.text import slugify

from backups.engine import compression as engine_compression
from backups.engine.errors import ArchiveError
from backups.engine.locations import KINDS, check_location
from backups.engine.names import printable
from backups.engine.processes import ProcessName, process_gone, this_process
from backups.fields import SecondsField
from backups.validators import validate_cron, validate_excludes

# A run's log keeps its newest lines: the worker's and every note added after its end.
LOG_LINES = 400
WARNINGS_LIMIT = 200
# How long a run may take when its source has no policy to say (a policy's default too).
DEFAULT_RUN_TIMEOUT_S = 3600


class Compression(models.TextChoices):
    ZSTD = engine_compression.ZSTD, "zstd"
    GZIP = engine_compression.GZIP, "gzip"
    NONE = engine_compression.NONE, "none"


COMPRESSION_LEVELS = {Compression.ZSTD: (1, 22), Compression.GZIP: (1, 9), Compression.NONE: (0, 0)}


class Policy(models.Model):
    """How often a source is backed up, how long backups are kept, and the targets to meet."""

    name = models.CharField(max_length=100, unique=True)
    schedule = models.CharField(
        max_length=100,
        blank=True,
        validators=[validate_cron],
        help_text="Cron expression in the server's time zone, e.g. '0 * * * *'. Empty: manual.",
    )
    rpo_s = SecondsField("RPO", null=True, blank=True, help_text="Most data you accept to lose.")
    rto_s = SecondsField("RTO", null=True, blank=True, help_text="Longest restore you accept.")
    keep_last = models.PositiveIntegerField(default=0)
    keep_hourly = models.PositiveIntegerField(default=0)
    keep_daily = models.PositiveIntegerField(default=0)
    keep_weekly = models.PositiveIntegerField(default=0)
    keep_monthly = models.PositiveIntegerField(default=0)
    keep_yearly = models.PositiveIntegerField(default=0)
    compression = models.CharField(
        max_length=8, choices=Compression.choices, default=Compression.ZSTD
    )
    compression_level = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(22)],
        help_text="zstd 1-22 (default 3), gzip 1-9 (default 6).",
    )
    drill_every_s = SecondsField(
        "drill every",
        null=True,
        blank=True,
        help_text="How often a restore drill proves the RTO, e.g. 7d. Empty: never.",
    )
    full_every_s = SecondsField(
        "full every",
        null=True,
        blank=True,
        help_text="How often a scheduled backup is a full one, e.g. 7d; the others are "
        "differential or incremental (directory sources). Empty: every backup is a full.",
    )
    differential_every_s = SecondsField(
        "differential every",
        null=True,
        blank=True,
        help_text="How often a scheduled backup between fulls is a differential, e.g. 1d; "
        "the others are incremental. Needs a full every.",
    )
    verify_after_backup = models.BooleanField(
        default=True, help_text="Check checksum and contents after every backup."
    )
    run_timeout_s = SecondsField(
        "run timeout",
        default=DEFAULT_RUN_TIMEOUT_S,
        help_text="A run that takes longer is stopped.",
    )
    check_queries = models.JSONField(
        default=list,
        blank=True,
        help_text='SQLite checks run on verify: [{"sql": "SELECT COUNT(*) FROM t", '
        '"expect": "> 0"}].',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "policies"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        low, high = COMPRESSION_LEVELS[self.compression]
        if self.compression_level is not None and not low <= self.compression_level <= high:
            message = (
                "no compression takes no level"
                if self.compression == Compression.NONE
                else f"{self.compression} levels go from {low} to {high}"
            )
            raise ValidationError({"compression_level": message})
        if self.run_timeout_s is not None and self.run_timeout_s < 60:
            raise ValidationError({"run_timeout_s": "A run timeout below one minute is unsafe."})
        if self.run_timeout_s is not None and self.run_timeout_s >= settings.Q_TIMEOUT_S:
            # The queue would kill the worker first and the run would end abandoned, with
            # no clean cancel and no rollback message.
            raise ValidationError(
                {
                    "run_timeout_s": f"A run timeout must stay below the workers' task timeout "
                    f"(Q_TIMEOUT_S = {settings.Q_TIMEOUT_S} s); raise Q_TIMEOUT_S first."
                }
            )
        if self.differential_every_s and not self.full_every_s:
            raise ValidationError(
                {"differential_every_s": "A differential needs a full to build on: set full every."}
            )
        if self.differential_every_s and self.differential_every_s >= self.full_every_s:
            raise ValidationError(
                {"differential_every_s": "Take differentials more often than fulls."}
            )
        if not isinstance(self.check_queries, list) or not all(
            isinstance(q, dict) and isinstance(q.get("sql"), str) for q in self.check_queries
        ):
            raise ValidationError(
                {"check_queries": 'Give a list of {"sql": "...", "expect": "> 0"} objects.'}
            )

    @property
    def keep_rules(self) -> dict[str, int]:
        """Return the retention counts by rule name."""
        return {
            "last": self.keep_last,
            "hourly": self.keep_hourly,
            "daily": self.keep_daily,
            "weekly": self.keep_weekly,
            "monthly": self.keep_monthly,
            "yearly": self.keep_yearly,
        }


class Source(models.Model):
    """Something that is backed up: a directory, a SQLite file, a pod path, a database."""

    class Kind(models.TextChoices):
        DIRECTORY = "directory", "directory"
        SQLITE = "sqlite", "SQLite database"
        KUBERNETES = "kubernetes", "Kubernetes pod path"
        POSTGRES = "postgres", "PostgreSQL database"

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    location = models.CharField(
        max_length=1000,
        help_text="directory/sqlite: an absolute path; kubernetes: "
        "NAMESPACE/POD[/CONTAINER]:/ABS/PATH; postgres: a libpq URI without a password.",
    )
    excludes = models.JSONField(
        default=list, blank=True, validators=[validate_excludes], help_text="Glob patterns."
    )
    policy = models.ForeignKey(
        Policy, null=True, blank=True, on_delete=models.PROTECT, related_name="sources"
    )
    enabled = models.BooleanField(default=True)
    owner = models.CharField(max_length=100, blank=True, help_text="Who is paged for it.")
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not self.slug and self.name:
            self.slug = slugify(self.name)[:100]
            if not self.slug:
                raise ValidationError({"name": "The name needs at least one letter or digit."})
        if self.kind and self.kind not in KINDS:
            raise ValidationError({"kind": f"Unknown kind {self.kind!r}."})
        if self.location and printable(self.location) != self.location:
            # The catalog's text columns cannot hold such bytes: refuse now, with a reason.
            raise ValidationError(
                {
                    "location": f"{printable(self.location)} is not valid UTF-8 (the \\xNN "
                    "are its other bytes); back up a folder above it, or rename it."
                }
            )
        if self.kind and self.location:
            try:
                check_location(self.kind, self.location)
            except ValueError as error:
                raise ValidationError({"location": str(error)}) from None

    @property
    def archive_dir(self):
        """Return the folder holding this source's archives."""
        return settings.ARCHIVE_ROOT / self.slug

    @property
    def run_timeout_s(self) -> int:
        """Return how long a run of this source may take: its policy's timeout, or the default."""
        return self.policy.run_timeout_s if self.policy_id else DEFAULT_RUN_TIMEOUT_S


class RunQuerySet(models.QuerySet):
    """Runs, and the state changes that start from an id rather than a loaded run."""

    def active(self):
        """Runs queued or running."""
        return self.filter(status__in=Run.ACTIVE)

    def restorable(self):
        """Backups whose archive should exist and be complete."""
        return self.filter(kind=Run.Kind.BACKUP, status__in=Run.GOOD)

    def waiting_too_long(self, *, now: dt.datetime, after_s: int) -> list[Run]:
        """Return the queued runs whose task may have been lost, oldest first.

        A run still queued `after_s` after it was handed to the workers, then twice as
        long after each re-send (a long queue behind busy workers is not re-sent every
        minute), is due to be handed over again.
        """
        candidates = self.filter(
            status=Run.Status.QUEUED, queued_at__lt=now - dt.timedelta(seconds=after_s)
        ).only("pk", "kind", "queued_at", "resent_at", "resends")
        return [
            run
            for run in candidates.order_by("queued_at", "pk")
            if now - (run.resent_at or run.queued_at)
            >= dt.timedelta(seconds=after_s * 2 ** min(run.resends, 10))
        ]

    def mark_resent(self, pks, *, now: dt.datetime) -> int:
        """Record that the runs `pks`, still queued, were handed to the workers again."""
        return self.filter(pk__in=list(pks), status=Run.Status.QUEUED).update(
            resent_at=now, resends=F("resends") + 1
        )

    def restore_points(self):
        """Restorable backups, newest first (by start, then id)."""
        return self.restorable().order_by("-started_at", "-pk")

    def newest_restorable(self, source) -> Run | None:
        """Return the newest backup of `source` whose archive is complete, if any."""
        return self.restore_points().filter(source=source).first()

    def lock_holder(self, source) -> Run | None:
        """Return the run holding `source`'s lock (a backup or an in-place restore), if any."""
        return self.filter(source=source, exclusive=True, status__in=Run.ACTIVE).first()

    def claim(self, pk: int, worker: str) -> Run | None:
        """Take the queued run `pk` for `worker`, this process; None when it was taken.

        One conditional UPDATE, so a run delivered twice is executed once. The heartbeat
        is stamped with the database's clock, and the process is recorded so that the
        reaper on this host sees at once when it dies.
        """
        owner = this_process()
        claimed = self.filter(pk=pk, status=Run.Status.QUEUED).update(
            status=Run.Status.RUNNING,
            started_at=timezone.now(),
            heartbeat_at=Now(),
            worker=worker,
            worker_host=owner.host,
            worker_pid=owner.pid,
            worker_started=owner.started,
            worker_pid_ns=owner.pid_ns,
        )
        if not claimed:
            return None
        return self.select_related("source__policy", "backup").get(pk=pk)

    def abandon(self, pk: int, *, reason: str, clock, **still) -> bool:
        """End the running run `pk` as abandoned, if the `still` conditions hold.

        `clock` is the database's (or a test's) now: hosts' clocks differ, and a run never
        ends before the moment its worker started it.
        """
        return (
            self.filter(pk=pk, status=Run.Status.RUNNING, **still).update(
                status=Run.Status.ABANDONED,
                finished_at=Greatest(clock, F("started_at")),
                error=reason,
            )
            == 1
        )

    def prune_claim(self, pks, *, worker: str, now) -> int:
        """Mark the good backups among `pks` as being removed by `worker`; return how many."""
        return self.filter(pk__in=pks, status__in=Run.GOOD).update(
            status=Run.Status.PRUNING, worker=worker, heartbeat_at=now
        )

    def prune_adopt(self, pk: int, *, holder: str, held_since, worker: str, now) -> bool:
        """Take over a removal its dead `holder` left half-done; False if another did."""
        return (
            self.filter(
                pk=pk, status=Run.Status.PRUNING, worker=holder, heartbeat_at=held_since
            ).update(worker=worker, heartbeat_at=now)
            == 1
        )

    def prune_undo(self, pk: int, *, worker: str, status: str) -> bool:
        """Put a backup `worker` was removing back to its good `status` (it was pinned)."""
        return (
            self.filter(pk=pk, status=Run.Status.PRUNING, worker=worker).update(status=status) == 1
        )

    def mark_pruned(self, pks, *, worker: str, now) -> int:
        """Record that retention removed the files of `pks`, with a line in each log."""
        note = f"{now:%Y-%m-%d %H:%M:%S} removed by retention ({worker})\n"
        return self.filter(pk__in=pks).update(
            status=Run.Status.PRUNED, heartbeat_at=now, log=Concat(F("log"), Value(note))
        )


class Run(models.Model):
    """One backup, restore or verification, from request to result.

    One table for the three kinds: they share the life cycle, the progress, the log and the
    per-source lock, and pages list them together; the few kind-specific columns (the
    backup a restore uses, its target, a verify's checks) are nullable.
    """

    class Kind(models.TextChoices):
        BACKUP = "backup"
        RESTORE = "restore"
        VERIFY = "verify"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        WARNING = "warning"
        FAILED = "failed"
        ABANDONED = "abandoned"
        CANCELLED = "cancelled"
        PRUNING = "pruning"
        PRUNED = "pruned"

    class Level(models.TextChoices):
        FULL = "full"
        DIFFERENTIAL = "differential"
        INCREMENTAL = "incremental"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        MANUAL = "manual"
        CLI = "cli"
        API = "api"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    GOOD = (Status.SUCCEEDED, Status.WARNING)
    # Ended without a usable result.
    BAD = (Status.FAILED, Status.ABANDONED)
    # Backups that succeeded when they ran, whatever retention did since: RPO history.
    SUCCEEDED_ONCE = (*GOOD, Status.PRUNING, Status.PRUNED)
    FINISHED = (
        Status.SUCCEEDED,
        Status.WARNING,
        Status.FAILED,
        Status.ABANDONED,
        Status.CANCELLED,
    )

    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="runs")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.BACKUP)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=8, choices=Trigger.choices, default=Trigger.MANUAL)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Backups and in-place restores touch the source's live data: at most one at a time.
    exclusive = models.BooleanField(default=True)
    keep = models.BooleanField(default=False, help_text="Never removed by retention.")
    cancel_requested = models.BooleanField(default=False)
    # When a queued run's task was last handed to the workers again, and how often: a
    # task can be lost with a killed worker (see `waiting_too_long`).
    resent_at = models.DateTimeField(null=True, blank=True)
    resends = models.PositiveSmallIntegerField(default=0)

    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A running run's heartbeat is written, and compared, with the database's clock:
    # hosts' clocks differ.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Who executes the run (host:pid:nonce); publishing checks it to fence out a worker
    # that lost the run while it was paused.
    worker = models.CharField(max_length=200, blank=True)
    # The process executing the run, so that its death on its own host is seen at once
    # instead of after ABANDON_AFTER_S without a heartbeat (see `owner_gone`).
    worker_host = models.CharField(max_length=255, blank=True)
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    worker_started = models.BigIntegerField(
        null=True, blank=True, help_text="The process's start, in clock ticks after boot."
    )
    worker_pid_ns = models.CharField(
        max_length=100, blank=True, help_text="The PID namespace: boot id and inode."
    )
    # When the worker claimed the right to publish (rename an archive into place, swap a
    # restored folder in, load a dump): from then on a cancel stops it only where safe.
    publishing_at = models.DateTimeField(null=True, blank=True)

    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(null=True, blank=True)
    files_done = models.BigIntegerField(default=0)
    files_total = models.BigIntegerField(null=True, blank=True)
    current_item = models.CharField(max_length=1000, blank=True)

    archive = models.CharField(max_length=1000, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    # A backup's level as taken; `level_asked` is what the request forced ('' lets the
    # policy decide), `base` the backup a delta is relative to and `full` its chain's full.
    level = models.CharField(max_length=12, choices=Level.choices, default=Level.FULL)
    level_asked = models.CharField(max_length=12, choices=Level.choices, blank=True)
    rehash = models.BooleanField(default=False)
    base = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="dependants"
    )
    full = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="chain_members"
    )
    sha256 = models.CharField(max_length=64, blank=True)
    payload_bytes = models.BigIntegerField(null=True, blank=True)
    payload_files = models.BigIntegerField(null=True, blank=True)

    error = models.TextField(blank=True)
    warnings = models.JSONField(default=list, blank=True)
    log = models.TextField(blank=True)

    backup = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="uses",
        limit_choices_to={"kind": "backup"},
    )
    target = models.CharField(max_length=1000, blank=True)
    in_place = models.BooleanField(default=False)
    paths = models.JSONField(default=list, blank=True)
    drill = models.BooleanField(default=False)
    checks = models.JSONField(default=list, blank=True)
    # For restores and drills: how long getting the data back took (the measured RTO).
    restore_seconds = models.FloatField(null=True, blank=True)
    # For backups: the newest verification's verdict (None: never verified).
    verified = models.BooleanField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)

    objects = RunQuerySet.as_manager()
    # Not stored: set by verify_request when it returns a verification already under way.
    already_active = False

    class Meta:
        ordering = ["-queued_at", "-id"]
        permissions = [("run_restore", "Can restore backups")]
        indexes = [
            models.Index(fields=["source", "kind", "status", "-started_at"]),
            models.Index(fields=["status", "heartbeat_at"]),
            models.Index(fields=["-queued_at", "-id"]),
            # The pages' and the compliance service's "newest run of each sort per source"
            # lookups, each an index range read instead of a scan of the source's history.
            models.Index(fields=["source", "kind", "-started_at"], name="run_source_kind_started"),
            models.Index(
                fields=["source", "kind", "-finished_at"], name="run_source_kind_finished"
            ),
            models.Index(fields=["source", "-queued_at", "-id"], name="run_source_queued"),
            models.Index(fields=["source", "status"], name="run_source_status"),
            # The id too, as the compliance service's tie-break: its newest timed restore is
            # then the index's first matching entry, not a sort of every drill of the source.
            models.Index(
                fields=["source", "-finished_at", "-id"],
                condition=Q(restore_seconds__isnull=False),
                name="run_source_timed_restores",
            ),
            models.Index(fields=["status", "finished_at"], name="run_status_finished"),
        ]
        constraints = [
            # The database is the lock: a second backup (or in-place restore) of a source
            # cannot even be queued while one is queued or running, on any host.
            models.UniqueConstraint(
                fields=["source"],
                condition=Q(exclusive=True, status__in=["queued", "running"]),
                name="one_exclusive_run_per_source",
            ),
            # A backup is verified (and drilled) once at a time: a second request while one
            # is queued or running gets that one back instead of a duplicate.
            models.UniqueConstraint(
                fields=["backup", "drill"],
                condition=Q(kind="verify", status__in=["queued", "running"]),
                name="one_active_verify_per_backup",
            ),
            models.CheckConstraint(
                condition=Q(finished_at__isnull=True)
                | Q(started_at__isnull=True)
                | Q(finished_at__gte=F("started_at")),
                name="run_finishes_after_it_starts",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} of {self.source_id and self.source.name} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    @property
    def stem(self) -> str:
        """Return the archive file stem: `<YYYYmmddTHHMMSSZ>-<run id>`."""
        moment = (self.started_at or self.queued_at).astimezone(dt.UTC)
        return f"{moment:%Y%m%dT%H%M%SZ}-{self.pk}"

    @property
    def archive_path(self) -> Path | None:
        return Path(self.archive) if self.archive else None

    def stored_archive(self) -> Path:
        """Return the archive's path once it is known to lie directly in its source's folder.

        The catalog can be rebuilt from files on disk, so `archive` is not trusted: a
        restore, a verification or a prune reads or removes only a regular file (not a
        symlink) directly inside ARCHIVE_ROOT/<source slug>/, with its sidecar and manifest
        beside it. Raise ArchiveError, naming the path, for anything else.
        """
        folder = Path(os.path.realpath(settings.ARCHIVE_ROOT / self.source.slug))
        path = Path(self.archive) if self.archive else None
        inside = (
            path is not None
            and self.source.slug not in ("", ".", "..")
            and "/" not in self.source.slug
            and path.is_absolute()
            and "\x00" not in self.archive
            and Path(os.path.realpath(path)) == folder / path.name
            and os.path.realpath(path.parent) == str(folder)
        )
        if not inside:
            raise ArchiveError(
                f"Backup #{self.pk} names the archive {printable(self.archive or '(none)')}, "
                f"which is not a file directly in its source's folder {folder}: it is neither "
                "read nor removed. Check the archive folder, then run import_archives."
            )
        return path

    @property
    def manifest_path(self) -> Path | None:
        """Return the manifest beside the archive: `<stem>.manifest.json`."""
        if not self.archive:
            return None
        archive = Path(self.archive)
        return archive.with_name(archive.name.split(".", 1)[0] + ".manifest.json")

    def owner_gone(self) -> str | None:
        """Say why the process executing this run is certainly gone; None when it may live.

        Only a process on this host can be checked this way; elsewhere the heartbeat tells.
        """
        if self.status != self.Status.RUNNING or self.worker_pid is None:
            return None
        owner = ProcessName(
            host=self.worker_host,
            pid=self.worker_pid,
            started=self.worker_started,
            pid_ns=self.worker_pid_ns,
        )
        return process_gone(owner)

    # State transitions. Each writes only the fields it changes, most of them with a
    # conditional UPDATE, so a worker that lost its run never overwrites someone else's.

    def _owned(self):
        """The run, while this copy's worker executes it and nobody asked to cancel it."""
        return Run.objects.filter(
            pk=self.pk, status=self.Status.RUNNING, worker=self.worker, cancel_requested=False
        )

    def beat(self, *, log: str | None = None, **progress) -> bool:
        """Refresh the heartbeat (the database's clock) and progress, and the log if given.

        Return False, writing nothing, once this copy's worker no longer owns the run or a
        cancel was asked for.
        """
        values = {"heartbeat_at": Now(), **progress}
        if log is not None:
            values["log"] = log
        return self._owned().update(**values) == 1

    def mark_publishing(self) -> bool:
        """Claim the right to publish the result; return False when it is no longer ours.

        One conditional UPDATE, its own short transaction: it holds only while this copy's
        worker still owns the run and nobody asked to cancel it. Publishing itself then runs
        outside any transaction, so the heartbeat, a cancel and every other writer carry on.
        """
        now = timezone.now()
        claimed = self._owned().update(publishing_at=now)
        if claimed:
            self.publishing_at = now
        return claimed == 1

    def _finish(self, status: str, fields: list[str]) -> bool:
        """Save the final state, but only while this copy's worker still owns the run.

        A worker that was paused past its heartbeat finds its run already declared
        abandoned; it must not overwrite that verdict. Return whether the write happened.
        """
        self.status = status
        self.finished_at = timezone.now()
        if self.started_at is None:
            self.started_at = self.finished_at
            fields.append("started_at")
        values = {name: getattr(self, name) for name in ["status", "finished_at", *fields]}
        owned = Run.objects.filter(pk=self.pk, status__in=self.ACTIVE, worker=self.worker)
        return owned.update(**values) == 1

    def mark_succeeded(self, warnings: list[str] | None = None, **result) -> bool:
        """Record success (or `warning` when there were warnings) and the result fields."""
        for name, value in result.items():
            setattr(self, name, value)
        self.warnings = list(warnings or [])[:WARNINGS_LIMIT]
        status = self.Status.WARNING if self.warnings else self.Status.SUCCEEDED
        return self._finish(status, ["warnings", *result])

    def mark_failed(self, error: str, **result) -> bool:
        """Record a failure with a message a user can act on."""
        self.error = printable(error)
        for name, value in result.items():
            setattr(self, name, value)
        return self._finish(self.Status.FAILED, ["error", *result])

    def mark_cancelled(self, reason: str = "Cancelled.", **result) -> bool:
        """Record that the run was stopped on request, with its log and progress so far."""
        self.error = printable(reason)
        for name, value in result.items():
            setattr(self, name, value)
        return self._finish(self.Status.CANCELLED, ["error", *result])

    def request_cancel(self, reason: str) -> str | None:
        """Stop the run: a queued one ends at once, cancelled with `reason`; a running one
        is flagged, and its worker stops at its next heartbeat.

        Return what the run was ("queued" or "running"), or None when it had ended.
        """
        now = timezone.now()
        ended = Run.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.CANCELLED,
            cancel_requested=True,
            started_at=now,
            finished_at=now,
            error=printable(reason),
        )
        if ended:
            return self.Status.QUEUED
        flagged = Run.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
            cancel_requested=True
        )
        return self.Status.RUNNING if flagged else None

    def record_level(self, level: str, *, base: Run | None = None, full: Run | None = None) -> None:
        """Record the level this backup is taken at and, for a delta, its base and full."""
        self.level, self.base, self.full = level, base, full
        Run.objects.filter(pk=self.pk).update(level=level, base=base, full=full)

    def chain(self) -> list[Run]:
        """Return the backups a restore of this one reads: its full, ..., itself.

        A full's chain is itself. A link that is gone from the catalog ends the list early:
        `chain()[0].level` then says it is not a full.
        """
        if self.level == self.Level.FULL or self.full_id is None:
            return [self]
        members = {
            run.pk: run
            for run in Run.objects.filter(Q(full_id=self.full_id) | Q(pk=self.full_id))
            .select_related("source")
            .order_by()
        }
        chain = [self]
        current = self
        while current.level != self.Level.FULL and current.base_id in members:
            current = members[current.base_id]
            chain.append(current)
            if len(chain) > len(members) + 1:
                break  # a cycle in a damaged catalog
        chain.reverse()
        return chain

    def mark_verified(self, ok: bool) -> None:
        """Record the verdict of this backup's newest verification."""
        self.verified, self.verified_at = ok, timezone.now()
        Run.objects.filter(pk=self.pk).update(verified=ok, verified_at=self.verified_at)

    def record_checks(self, checks: list[dict]) -> None:
        """Store a verification's checks as soon as they are known, before its end."""
        self.checks = checks
        Run.objects.filter(pk=self.pk).update(checks=checks)

    @staticmethod
    def log_text(lines) -> str:
        """Return log `lines` as the stored log: the newest LOG_LINES, one per line."""
        kept = list(lines)[-LOG_LINES:]
        return "\n".join(kept) + ("\n" if kept else "")

    def append_log(self, line: str) -> None:
        """Add a timestamped line to the log, dropping its oldest past LOG_LINES."""
        stamp = timezone.now().strftime("%H:%M:%S")
        self.log = self.log_text([*self.log.splitlines(), f"{stamp} {printable(line)}"])
        self.save(update_fields=["log"])


class Manifest(models.Model):
    """The catalog copy of a backup's manifest.json, browsable folder by folder."""

    run = models.OneToOneField(Run, on_delete=models.CASCADE, primary_key=True)
    path = models.CharField(max_length=1000)
    files = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    entries = models.BigIntegerField(default=0)
    # Not stored: set by manifest_store to how many later copies of a path it skipped.
    duplicates = 0

    def __str__(self) -> str:
        return f"manifest of run #{self.run_id}"


class ManifestDir(models.Model):
    """A folder inside a backup; entries hang off it so a folder is one indexed lookup."""

    manifest = models.ForeignKey(Manifest, on_delete=models.CASCADE, related_name="dirs")
    path = models.TextField(help_text="Relative to the source root; '' is the root.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["manifest", "path"], name="unique_dir_per_manifest")
        ]

    def __str__(self) -> str:
        return self.path or "/"


class ManifestEntry(models.Model):
    """One file, folder or link in a backup.

    Kept small on purpose (a million of them is normal): the folder and the name form the
    primary key, so there is no surrogate id and no second index, the hash is 32 raw bytes
    and the mtime whole seconds (the exact value stays in manifest.json).
    """

    class Type(models.TextChoices):
        FILE = "f", "file"
        DIR = "d", "dir"
        SYMLINK = "l", "symlink"
        HARDLINK = "h", "hardlink"
        # A differential's or incremental's record that the path is gone since its base.
        DELETED = "x", "deleted"

    pk = models.CompositePrimaryKey("directory", "name")
    # Column order matters on PostgreSQL: the 8-byte columns first, then the narrow ones
    # and the variable-length ones, so no row carries alignment padding. The primary key
    # already starts with the folder: a second index on it would only cost space.
    directory = models.ForeignKey(
        ManifestDir, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    size = models.BigIntegerField(default=0)
    mtime = models.BigIntegerField(default=0)
    mode = models.PositiveSmallIntegerField(default=0)  # permission bits: at most 0o7777
    type = models.CharField(max_length=1, choices=Type.choices)
    name = models.TextField()
    sha256 = models.BinaryField(max_length=32, null=True)
    target = models.TextField(null=True)

    def __str__(self) -> str:
        return self.name

    @property
    def sha256_hex(self) -> str:
        return bytes(self.sha256).hex() if self.sha256 else ""


class AuditEvent(models.Model):
    """Who did what, to which object, when, and how it ended."""

    class Outcome(models.TextChoices):
        REQUESTED = "requested"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        DENIED = "denied"

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # The actor's name survives the deletion of their account.
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=50, db_index=True)
    object_type = models.CharField(max_length=50, blank=True)
    object_id = models.CharField(max_length=50, blank=True)
    object_repr = models.CharField(max_length=300, blank=True)
    source = models.ForeignKey(
        Source, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return (
            f"{self.at:%Y-%m-%d %H:%M} {self.actor_name or 'system'} {self.action} {self.outcome}"
        )


class WorkerBeat(models.Model):
    """When a worker last ran a recurring job, the every-minute housekeeping above all.

    /healthz tells from it whether any worker cluster is alive, whatever the broker (ORM
    or Redis): a row written by the job itself proves a worker took a task and ran it.
    """

    name = models.CharField(max_length=50, primary_key=True)
    at = models.DateTimeField()
    worker = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def beat(cls, name: str, *, worker: str = "", at: dt.datetime | None = None) -> None:
        """Record that `worker` ran the job `name` now (one row per job, overwritten)."""
        cls.objects.update_or_create(
            name=name, defaults={"at": at or timezone.now(), "worker": worker[:200]}
        )


class SourceStanding(models.Model):
    """A source's standing as data: its newest runs of each sort, kept as runs end.

    Pages, `status` and `/metrics` read this one row per source instead of searching the
    run history on every request. `backups.services.standing` owns every write: it
    refreshes the row when a run of the source ends, is pruned or imported, and
    housekeeping re-derives every row from the run table in turn, so drift heals.
    The few facts the rules read for the whole fleet are copied here as columns; the runs
    a page shows are foreign keys.
    """

    source = models.OneToOneField(
        Source, on_delete=models.CASCADE, primary_key=True, related_name="standing"
    )
    # The newest backup attempt (whatever its outcome), by queue time.
    last_backup = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The newest backup whose archive is complete (succeeded or warning), by start time.
    last_success = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_success_at = models.DateTimeField(null=True, blank=True)
    # The newest complete backup whose verification passed.
    last_verified = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    verified_at = models.DateTimeField(null=True, blank=True)
    # The newest verification with a verdict (passed or failed), by end time.
    last_verify = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    integrity = models.CharField(max_length=8, default="unknown")
    # The newest drill or restore that timed getting the data back (the measured RTO).
    last_proof = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    proof_seconds = models.FloatField(null=True, blank=True)
    proof_at = models.DateTimeField(null=True, blank=True)
    # When the newest backup was queued: scheduled slots up to here are judged and stored.
    attempted_at = models.DateTimeField(null=True, blank=True)
    # RPO history: the oldest and newest start of a backup that once succeeded (a pruned
    # one still covered its time), bounds of the stored gaps.
    first_covered_at = models.DateTimeField(null=True, blank=True)
    covered_until = models.DateTimeField(null=True, blank=True)
    # The targets the stored 30-day facts were derived with: a policy change re-derives.
    gaps_rpo_s = models.PositiveIntegerField(null=True, blank=True)
    slots_cron = models.CharField(max_length=100, blank=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)
    # When the row was last derived from the whole window, for housekeeping's rotation.
    recomputed_at = models.DateTimeField(null=True, blank=True, db_index=True)

    def __str__(self) -> str:
        return f"standing of source #{self.source_id}"


class SourceDay(models.Model):
    """One source's backups on one UTC day: the 30-day counts are sums of 31 such rows."""

    pk = models.CompositePrimaryKey("source", "day")
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="+", db_index=False)
    day = models.DateField()
    # Backups queued that day that succeeded (pruned since included) and that failed.
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    # Scheduled slots of that day that no backup was queued in time for.
    missed = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["day"], name="sourceday_day")]

    def __str__(self) -> str:
        return f"{self.day} of source #{self.source_id}"


class RpoGap(models.Model):
    """A stretch during which a source's RPO target did not hold, closed by a backup.

    Bounds are seconds since the epoch (UTC), so the share of a window out of target is
    one portable SQL sum. The open stretch after the newest backup is not stored: it
    grows with the clock and is added when read.
    """

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="+", db_index=False)
    start_s = models.FloatField()
    end_s = models.FloatField()

    class Meta:
        indexes = [
            models.Index(fields=["source", "end_s"], name="rpogap_source_end"),
            models.Index(fields=["end_s"], name="rpogap_end"),
        ]

    def __str__(self) -> str:
        return f"RPO gap of source #{self.source_id}"


class ScheduleMiss(models.Model):
    """A scheduled backup slot that fired but started no backup, and why.

    The slots that never fired at all (every worker down) have no row: the stored
    standing counts them from the schedule (see `SourceDay.missed`).
    """

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="misses")
    at = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=500)
    # The run that held the source, when it was busy.
    blocker = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        indexes = [models.Index(fields=["source", "-at"], name="miss_source_at")]

    def __str__(self) -> str:
        return f"{self.source_id} missed at {self.at:%Y-%m-%d %H:%M}: {self.reason}"
