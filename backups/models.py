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
from backups.engine.crypto import fingerprint, parse_recipients
from backups.engine.errors import ArchiveError, KeyFileError
from backups.engine.locations import KINDS, check_location
from backups.engine.manifest import is_encrypted, manifest_name
from backups.engine.names import printable
from backups.engine.processes import ProcessName, process_gone, this_process
from backups.engine.storage import KINDS as STORAGE_KINDS
from backups.engine.storage import LocalStorage, StorageError, StoredFile, check_key, open_storage
from backups.fields import SecondsField
from backups.validators import parse_tags, validate_cron, validate_excludes, validate_tags

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
# The storage of runs and policies that name none: ARCHIVE_ROOT, a local folder.
DEFAULT_STORAGE_NAME = "default"
_ENV_PREFIX_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"


def default_storage() -> LocalStorage:
    """Return the storage of runs and policies that name none: the folder ARCHIVE_ROOT."""
    return LocalStorage(settings.ARCHIVE_ROOT)


# The retention rules, in the order their reasons are listed (restic's `--keep-*`).
KEEP_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


class KeepRules(models.Model):
    """How many backups retention keeps: the N newest, and the newest of N hours, days..."""

    keep_last = models.PositiveIntegerField(default=0)
    keep_hourly = models.PositiveIntegerField(default=0)
    keep_daily = models.PositiveIntegerField(default=0)
    keep_weekly = models.PositiveIntegerField(default=0)
    keep_monthly = models.PositiveIntegerField(default=0)
    keep_yearly = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True

    @property
    def keep_rules(self) -> dict[str, int]:
        """Return the retention counts by rule name."""
        return {rule: getattr(self, f"keep_{rule}") for rule in KEEP_RULES}

    @property
    def has_keep_rules(self) -> bool:
        """Return whether any rule keeps something."""
        return any(self.keep_rules.values())


class Storage(KeepRules):
    """Where archives live besides ARCHIVE_ROOT: a local folder or an S3 bucket and prefix.

    Only where, never a secret: an S3 storage's credentials come from the workers'
    environment, the standard AWS variables or `<credentials_env>_ACCESS_KEY_ID` and
    `<credentials_env>_SECRET_ACCESS_KEY`.

    Its own keep rules, when it has any, decide which of the copies it holds stay: a
    storage without them keeps a copy as long as the backup's policy keeps the backup.
    """

    class Kind(models.TextChoices):
        LOCAL = "local"
        S3 = "s3"

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    path = models.CharField(max_length=1000, blank=True, help_text="local: an absolute folder.")
    bucket = models.CharField(max_length=63, blank=True)
    prefix = models.CharField(max_length=500, blank=True)
    endpoint = models.CharField(
        max_length=500, blank=True, help_text="s3: the service's URL; empty for AWS."
    )
    region = models.CharField(max_length=100, blank=True)
    credentials_env = models.CharField(
        max_length=100,
        blank=True,
        help_text="s3: read PREFIX_ACCESS_KEY_ID and PREFIX_SECRET_ACCESS_KEY from the "
        "workers' environment; empty: the standard AWS variables.",
    )
    # The newest `storage check`: when, and what failed (empty: it passed).
    checked_at = models.DateTimeField(null=True, blank=True)
    check_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    # Where its archives are: what the runs' and copies' locators were made from.
    PLACE_FIELDS = ("kind", "path", "bucket", "prefix")

    def clean(self) -> None:
        if self.name == DEFAULT_STORAGE_NAME:
            raise ValidationError(
                {"name": f"{DEFAULT_STORAGE_NAME!r} names ARCHIVE_ROOT; pick another name."}
            )
        if self.kind not in STORAGE_KINDS:
            raise ValidationError(
                {"kind": f"Unknown kind {self.kind!r}: use one of {', '.join(STORAGE_KINDS)}."}
            )
        if self.kind == self.Kind.LOCAL:
            self._clean_local()
        else:
            self._clean_s3()
        self._clean_place()

    def _clean_place(self) -> None:
        """Refuse to move a storage that holds archives: the catalog would lose them."""
        if self.pk is None:
            return
        saved = Storage.objects.filter(pk=self.pk).values(*self.PLACE_FIELDS).first()
        moved = [name for name in self.PLACE_FIELDS if saved and saved[name] != getattr(self, name)]
        if not moved:
            return
        held = self.runs.count() + self.copies.count()
        if held:
            raise ValidationError(
                {
                    moved[0]: f"Storage {self.name!r} holds {held} archive(s) at "
                    f"{Storage(**saved).location}; its {moved[0]} cannot change under them. "
                    "Add a storage for the new place and point the policies at it."
                }
            )

    def _clean_local(self) -> None:
        if self.bucket or self.prefix or self.endpoint or self.region or self.credentials_env:
            raise ValidationError({"kind": "A local storage takes only a path."})
        if not self.path or not os.path.isabs(self.path) or "\x00" in self.path:
            raise ValidationError({"path": "Give the folder as an absolute path."})
        mine = os.path.realpath(self.path)
        root = os.path.realpath(settings.ARCHIVE_ROOT)
        if os.path.commonpath([mine, root]) in (mine, root):
            raise ValidationError(
                {
                    "path": f"{self.path} is ARCHIVE_ROOT ({root}) or in or around it, which "
                    "is the default storage already; give a folder apart from it."
                }
            )

    def _clean_s3(self) -> None:
        if self.path:
            raise ValidationError({"path": "An S3 storage takes a bucket, not a path."})
        if self.credentials_env and (
            self.credentials_env[0].isdigit()
            or any(char not in _ENV_PREFIX_CHARS for char in self.credentials_env)
        ):
            raise ValidationError(
                {
                    "credentials_env": f"{self.credentials_env!r} is not a variable name "
                    "prefix such as 'BACKUP_S3'."
                }
            )
        try:
            # No credentials needed to check the bucket, prefix and endpoint's form.
            open_storage(**self._settings(credentials=False))
        except StorageError as error:
            raise ValidationError({"bucket": str(error)}) from None

    def _settings(self, *, credentials: bool = True) -> dict:
        if self.kind == self.Kind.LOCAL:
            return {"kind": "local", "root": self.path}
        return {
            "kind": "s3",
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint or None,
            "region": self.region or None,
            "credentials_env": (self.credentials_env or None) if credentials else None,
        }

    def open(self):
        """Return the engine's storage for this row; raise StorageError saying what is wrong."""
        return open_storage(**self._settings())

    @property
    def url(self) -> str:
        """Return an S3 storage's `s3://bucket[/prefix]` ("" for a local one)."""
        if self.kind != self.Kind.S3:
            return ""
        return "s3://" + "/".join(part for part in (self.bucket, self.prefix) if part)

    @property
    def location(self) -> str:
        """Return where the storage is, for people: a folder, or `s3://bucket/prefix`."""
        if self.kind == self.Kind.LOCAL:
            return self.path
        return f"{self.url} at {self.endpoint}" if self.endpoint else self.url

    def set_keep_rules(self, rules: dict[str, int]) -> dict[str, list]:
        """Replace the storage's keep rules (all 0: none); return `{field: [old, new]}`."""
        before = {f"keep_{rule}": getattr(self, f"keep_{rule}") for rule in KEEP_RULES}
        for rule in KEEP_RULES:
            setattr(self, f"keep_{rule}", rules.get(rule, 0))
        after = {f"keep_{rule}": getattr(self, f"keep_{rule}") for rule in KEEP_RULES}
        self.save(update_fields=list(after))
        return {name: [before[name], after[name]] for name in after if before[name] != after[name]}

    def record_check(self, error: str = "") -> None:
        """Record the outcome of a write, read back and delete probe (empty error: passed)."""
        self.checked_at, self.check_error = timezone.now(), printable(error)
        Storage.objects.filter(pk=self.pk).update(
            checked_at=self.checked_at, check_error=self.check_error
        )


def normalized_tags(value: str) -> str:
    """Return a tag list as stored: comma-separated, without spaces or repeats.

    A value that is no tag list is returned as it is, for its validator to refuse.
    """
    try:
        return ",".join(parse_tags(value))
    except ValueError:
        return value


class Policy(KeepRules):
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
    notify = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_tags],
        help_text="Notification tags (comma-separated) of APPRISE_CONFIG targets that get "
        "its sources's alerts.",
    )
    storage = models.ForeignKey(
        Storage,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="policies",
        help_text="Where backups are written. Empty: ARCHIVE_ROOT.",
    )
    copy_to = models.ManyToManyField(
        Storage,
        blank=True,
        related_name="copy_policies",
        help_text="Where each backup is copied once published (offsite copies).",
    )
    archive_to = models.ForeignKey(
        Storage,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="archive_policies",
        help_text="A colder storage restore points move to once older than 'archive after'.",
    )
    archive_after_s = SecondsField(
        "archive after",
        null=True,
        blank=True,
        help_text="How old a restore point is when it moves to the archive storage, e.g. 30d.",
    )
    # Public keys: they let a host encrypt, never decrypt, so the database may hold them.
    recipients = models.TextField(
        "encrypt to",
        blank=True,
        help_text="age recipients (public keys, age1…), one a line: backups are then "
        "encrypted to them. Empty: not encrypted. A change applies to new backups only.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "policies"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def check_copy_to(storage_id: int | None, copy_to_ids) -> None:
        """Refuse a copy to the storage the backups are written to: it would be no copy."""
        if storage_id is not None and storage_id in set(copy_to_ids):
            raise ValidationError(
                {"copy_to": "A backup cannot be copied to the storage it is written to."}
            )

    def clean(self) -> None:
        self.notify = normalized_tags(self.notify)
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
        if (self.archive_to_id is None) != (self.archive_after_s is None):
            raise ValidationError(
                {"archive_to": "Give both an archive storage and an age to move backups after."}
            )
        if self.archive_to_id is not None and self.archive_to_id == self.storage_id:
            raise ValidationError(
                {"archive_to": "The archive storage must differ from the one backups go to."}
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
        try:
            parse_recipients(self.recipients or "")
        except KeyFileError as error:
            raise ValidationError({"recipients": str(error)}) from None

    @property
    def recipient_list(self) -> list[str]:
        """Return the age recipients backups are encrypted to (empty: not encrypted)."""
        return parse_recipients(self.recipients or "")


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
    notify = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_tags],
        help_text="Notification tags (comma-separated) of APPRISE_CONFIG targets that get "
        "this source's alerts.",
    )
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        self.notify = normalized_tags(self.notify)
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
        COPY = "copy"

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

    # Where a backup's archive is: empty, the default storage (ARCHIVE_ROOT), and `archive`
    # its absolute path; else `archive` is the storage's locator (a path, `s3://…`).
    storage = models.ForeignKey(
        Storage, null=True, blank=True, on_delete=models.PROTECT, related_name="runs"
    )
    archive = models.CharField(max_length=1000, blank=True)
    # Its policy no longer keeps it: it lives on as the copy in `storage` (and maybe in
    # others) that a storage's own keep rules hold, and leaves once none does.
    copy_only = models.BooleanField(default=False)
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
    # A restore told which storage to read (`--from`): it never falls back to another.
    picked_storage = models.BooleanField(default=False)
    paths = models.JSONField(default=list, blank=True)
    drill = models.BooleanField(default=False)
    checks = models.JSONField(default=list, blank=True)
    # For restores and drills: how long getting the data back took (the measured RTO).
    restore_seconds = models.FloatField(null=True, blank=True)
    # For backups: the newest verification's verdict (None: never verified).
    verified = models.BooleanField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    # For backups: the age recipients (public keys) the archive and manifest were
    # encrypted to, as they were when it ran; empty when not encrypted.
    recipients = models.JSONField(default=list, blank=True)
    # For verifications: the checks that read the plaintext could not run on this host
    # (no private key for an encrypted backup), so the verdict says nothing of contents.
    checks_skipped = models.BooleanField(default=False)

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

    def stored_archive(self) -> StoredFile:
        """Return the archive once it is known to lie directly in its source's folder.

        The catalog can be rebuilt from files on disk and buckets, so `archive` is not
        trusted: a restore, a verification or a prune reads or removes only the object
        `<source slug>/<archive name>` of the run's storage, with its sidecar and manifest
        beside it; in the default storage, a regular file (not a symlink) directly inside
        ARCHIVE_ROOT/<source slug>/. Raise ArchiveError naming the archive for anything
        else, and StorageError when the run's storage cannot be opened.
        """
        if self.storage_id is not None:
            return self._stored_in(self.storage.open())
        folder = Path(os.path.realpath(settings.ARCHIVE_ROOT / self.source.slug))
        path = Path(self.archive) if self.archive else None
        inside = (
            path is not None
            and self._plain_slug()
            and path.is_absolute()
            and "\x00" not in self.archive
            and Path(os.path.realpath(path)) == folder / path.name
            and os.path.realpath(path.parent) == str(folder)
        )
        if not inside:
            raise self._outside(str(folder))
        # The same key as in every other storage, so copies land at `<slug>/<name>` too.
        return StoredFile(LocalStorage(folder.parent), f"{folder.name}/{path.name}")

    def _plain_slug(self) -> bool:
        return self.source.slug not in ("", ".", "..") and "/" not in self.source.slug

    def _stored_in(self, storage) -> StoredFile:
        """Return the archive as the key `<slug>/<name>` of `storage`, whose locator it is."""
        name = self.archive.rpartition("/")[2]
        key = f"{self.source.slug}/{name}"
        try:
            fits = self._plain_slug() and check_key(key) and storage.locator(key) == self.archive
        except StorageError:
            fits = False
        if not fits:
            raise self._outside(f"{self.source.slug}/ in {storage.describe()}")
        return StoredFile(storage, key)

    def _outside(self, folder: str) -> ArchiveError:
        return ArchiveError(
            f"Backup #{self.pk} names the archive {printable(self.archive or '(none)')}, "
            f"which is not a file directly in its source's folder {folder}: it is neither "
            "read nor removed. Check the archive folder, then run import_archives."
        )

    def stored_manifest(self) -> StoredFile:
        """Return the manifest beside the archive, in the same storage."""
        return self.stored_archive().sibling(self.manifest_path.name)

    @property
    def manifest_path(self) -> Path | None:
        """Return the manifest beside the archive: `<stem>.manifest.json`, and `.age` too
        when the archive is encrypted."""
        if not self.archive:
            return None
        archive = Path(self.archive)
        stem = archive.name.split(".", 1)[0]
        return archive.with_name(manifest_name(stem, encrypted=is_encrypted(archive.name)))

    @property
    def encrypted(self) -> bool:
        """Return whether this backup's archive is age-encrypted."""
        return bool(self.recipients) or is_encrypted(self.archive)

    @property
    def recipient_fingerprints(self) -> list[str]:
        """Return the short forms of the recipients this backup was encrypted to."""
        return [fingerprint(recipient) for recipient in self.recipients or []]

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

    def record_storage(self, storage: Storage | None) -> None:
        """Record the storage a backup writes to (None: ARCHIVE_ROOT), before it writes.

        The reaper cleans what a dead run left there, so it is known from the start.
        """
        self.storage = storage
        Run.objects.filter(pk=self.pk).update(storage=storage)

    def move_to(self, storage: Storage, archive: str) -> None:
        """Record that the backup's files now live in `storage`, at `archive`."""
        self.storage, self.archive = storage, archive
        Run.objects.filter(pk=self.pk).update(storage=storage, archive=archive)

    def keep_as_copy(self, copy: Copy) -> None:
        """Record that the backup now lives only as `copy`, which its storage's rules keep."""
        self.storage, self.archive, self.copy_only = copy.storage, copy.archive, True
        Run.objects.filter(pk=self.pk).update(
            storage=copy.storage, archive=copy.archive, copy_only=True
        )

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

    def record_checks(self, checks: list[dict], *, skipped: bool = False) -> None:
        """Store a verification's checks as soon as they are known, before its end.

        `skipped`: the checks that read the plaintext could not run here, and none that
        ran failed, so the verification is no verdict on the backup's integrity.
        """
        self.checks, self.checks_skipped = checks, skipped
        Run.objects.filter(pk=self.pk).update(checks=checks, checks_skipped=skipped)

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


class Copy(models.Model):
    """One backup's copy in another storage: archive, checksum file and manifest, proven.

    One row per (backup, storage), whatever the number of attempts: a failed copy is
    retried on the same row, with backoff, and never duplicated.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        REMOVED = "removed"

    backup = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="copies")
    storage = models.ForeignKey(Storage, on_delete=models.PROTECT, related_name="copies")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # The copy run of the newest attempt.
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    archive = models.CharField(max_length=1000, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    duration_s = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    copied_at = models.DateTimeField(null=True, blank=True)
    retry_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["backup", "storage"], name="one_copy_per_storage")
        ]
        indexes = [models.Index(fields=["status", "retry_at"], name="copy_status_retry")]

    def __str__(self) -> str:
        return f"copy of backup #{self.backup_id} in {self.storage_id} ({self.status})"

    def mark_succeeded(self, *, archive: str, sha256: str, size: int, duration_s: float) -> None:
        """Record a proven copy."""
        Copy.objects.filter(pk=self.pk).update(
            status=self.Status.SUCCEEDED,
            archive=archive,
            sha256=sha256,
            size=size,
            duration_s=duration_s,
            error="",
            copied_at=timezone.now(),
            retry_at=None,
        )

    @classmethod
    def mark_removed(cls, backup_ids) -> int:
        """Record that the copies of the backups `backup_ids` were removed with them."""
        return cls.objects.filter(backup_id__in=list(backup_ids)).update(status=cls.Status.REMOVED)

    def stored_archive(self, opened=None) -> StoredFile:
        """Return the copied archive in its storage, at the key the backup has in its own.

        `opened` is the storage already opened, to check many copies with one client.
        Raise ArchiveError when `archive` is not that key's locator, StorageError when
        the storage cannot be opened.
        """
        storage = opened if opened is not None else self.storage.open()
        key = f"{self.backup.source.slug}/{self.archive.rpartition('/')[2]}"
        try:
            fits = check_key(key) and storage.locator(key) == self.archive
        except StorageError:
            fits = False
        if not fits:
            raise ArchiveError(
                f"The copy of backup #{self.backup_id} in storage {self.storage.name!r} names "
                f"{printable(self.archive or '(none)')}, not a file of its source's folder: "
                "it is not read."
            )
        return StoredFile(storage, key)

    def mark_failed(self, error: str, *, retry_after_s: float) -> None:
        """Record a failed attempt; housekeeping tries again after `retry_after_s`."""
        Copy.objects.filter(pk=self.pk).exclude(status=self.Status.SUCCEEDED).update(
            status=self.Status.FAILED,
            error=printable(error),
            retry_at=timezone.now() + dt.timedelta(seconds=retry_after_s),
        )


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


class Alert(models.Model):
    """A condition on a source (or on the whole fleet) that is firing, or was and resolved.

    One row per source and condition, kept across episodes: `state` says whether it holds
    now, `since` when that last changed. `backups.services.alerts` owns every write: it
    evaluates the conditions from each source's stored standing, records each transition
    as an `AlertEvent` and queues its notifications. `notified_state` is the state the
    targets were last told of, so a transition is notified once, whoever evaluates it.
    """

    class State(models.TextChoices):
        FIRING = "firing"
        RESOLVED = "resolved"

    source = models.ForeignKey(
        Source, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts"
    )
    condition = models.CharField(max_length=40)
    state = models.CharField(max_length=8, choices=State.choices)
    # When the state last changed; and when the current (or last) firing began.
    since = models.DateTimeField()
    fired_at = models.DateTimeField()
    # What the newest transition said: what broke (one line), then the numbers.
    summary = models.CharField(max_length=300)
    detail = models.TextField(blank=True)
    notified_state = models.CharField(max_length=8, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    # An acknowledgement holds for the current firing and ends when it resolves.
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_by_name = models.CharField(max_length=150, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    ack_note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-since", "-id"]
        permissions = [("acknowledge_alert", "Can acknowledge and silence alerts")]
        constraints = [
            models.UniqueConstraint(fields=["source", "condition"], name="one_alert_per_condition"),
            models.UniqueConstraint(
                fields=["condition"],
                condition=Q(source__isnull=True),
                name="one_fleet_alert_per_condition",
            ),
        ]
        indexes = [models.Index(fields=["state", "-since"], name="alert_state_since")]

    def __str__(self) -> str:
        return f"{self.condition} of {self.source.name if self.source_id else 'the fleet'}"

    @property
    def is_firing(self) -> bool:
        return self.state == self.State.FIRING


class AlertEvent(models.Model):
    """One transition of an alert (firing or resolved), or a reminder of a firing one.

    Its id travels in every message about it, so a receiver can drop a repeat.
    """

    class Kind(models.TextChoices):
        TRANSITION = "transition"
        REMINDER = "reminder"

    class Notify(models.TextChoices):
        PENDING = "", "not yet"
        QUEUED = "queued", "queued"
        SILENCED = "silenced", "silenced"
        SUPERSEDED = "superseded", "said by a graver alert"
        UNSENT = "unsent", "firing was never sent"
        OFF = "off", "notifications off"
        NO_TARGET = "no_target", "no target"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField()
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.TRANSITION)
    state = models.CharField(max_length=8, choices=Alert.State.choices)
    title = models.CharField(max_length=300)
    body = models.TextField()
    notify = models.CharField(max_length=10, choices=Notify.choices, blank=True)
    notify_note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["alert", "-at", "-id"], name="alertevent_alert_at")]

    def __str__(self) -> str:
        return f"{self.alert} {self.state} at {self.at:%Y-%m-%d %H:%M}"


class Silence(models.Model):
    """Alerts of a source, of a condition, or of both, notify nobody until `until`.

    They still show on the pages. A silence ends by itself; one that ended is kept for
    the record.
    """

    source = models.ForeignKey(
        Source, null=True, blank=True, on_delete=models.CASCADE, related_name="silences"
    )
    condition = models.CharField(max_length=40, blank=True)
    until = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_name = models.CharField(max_length=150, blank=True)
    note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-until", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(source__isnull=False) | ~Q(condition=""),
                name="silence_names_a_source_or_a_condition",
            )
        ]

    def __str__(self) -> str:
        what = " ".join(filter(None, [self.source.name if self.source_id else "", self.condition]))
        return f"silence of {what} until {self.until:%Y-%m-%d %H:%M}"

    def covers(self, alert: Alert) -> bool:
        """Return whether this silence applies to `alert`."""
        return (self.source_id is None or self.source_id == alert.source_id) and (
            not self.condition or self.condition == alert.condition
        )


class Notification(models.Model):
    """The outbox: one message about one alert event to one target of APPRISE_CONFIG.

    Created in the transaction that records the event, so none is lost; claimed with a
    conditional UPDATE before it is sent, so two senders never send it both. The target is
    named by a keyed hash of its URL and shown with its secrets masked: the URLs hold
    tokens, which stay out of this database.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        DELIVERED = "delivered"
        FAILED = "failed"

    event = models.ForeignKey(AlertEvent, on_delete=models.CASCADE, related_name="notifications")
    target_key = models.CharField(max_length=64)
    target = models.CharField(max_length=300, help_text="The target's URL, secrets masked.")
    tags = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=1000, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "target_key"], name="one_message_per_target")
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="notification_due"),
            models.Index(fields=["target_key", "-id"], name="notification_target"),
        ]

    def __str__(self) -> str:
        return f"notification #{self.pk} of event #{self.event_id} to {self.target}"
