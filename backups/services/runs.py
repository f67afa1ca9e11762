"""The life of any run, whatever its kind: claim, heartbeat, cancel, fenced end, reaper.

Whoever executes a run (a django-q worker, or the CLI with `--inline`) goes through
`execution.run_execute`, which knows the kinds and uses what is here. A run is claimed
with a conditional UPDATE, so a run delivered twice executes once. A thread then
refreshes the heartbeat and the progress once a second with another conditional UPDATE
that only matches while this worker still owns the run and nobody asked to cancel it:
when it stops matching, the engine's next `check()` stops the work, and `publish()`
claims the right to publish with one more conditional UPDATE before it renames, swaps or
loads anything. Publishing itself holds no transaction: it can take minutes (a
pg_restore, a copy into a live database) while the heartbeat, cancels and logins go on.

Heartbeats are stamped with the database's clock, the one the reaper compares them with,
so hosts whose clocks differ do not reap each other's live runs. The claim also records
the executing process (host, pid, start time), so the reaper on that host sees at once
that it died. Whatever goes wrong inside, a run ends with a sentence in its error.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import DateTimeField, Value
from django.db.models.functions import Now
from django.utils import timezone

from backups.audit import audit_record
from backups.engine.atomic import stale_temps
from backups.engine.errors import Cancelled, EngineError, FencedError
from backups.engine.hooks import Hooks, Progress
from backups.engine.names import printable
from backups.engine.processes import this_process
from backups.engine.restore import recover_interrupted
from backups.models import LOG_LINES, Run, Source
from backups.services.standing import standing_refresh

logger = logging.getLogger(__name__)

# A run's end is written a few times over about seven seconds before it is left to the
# reaper: long enough for a dropped connection or a database restart, no longer.
END_WRITE_DELAYS_S = (0.5, 1, 2, 4)


def one_sentence(error: BaseException) -> str:
    """Return what `error` says as one short line for a user: its first line, bounded."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if len(first) > 200:
        first = first[:199] + "…"
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def connection_refresh() -> None:
    """Replace this thread's database connection if it broke or outlived its age.

    Django keeps a connection the database dropped (a restart, a failover) until told
    otherwise, and a run can outlast it by hours; the next query then opens a new one.
    Inside a transaction the connection is left alone: it cannot be replaced there. So is
    a SQLite one: a file cannot drop it, and as SQLite's connections have no age to reach
    (CONN_MAX_AGE 0), replacing it would cost a WAL checkpoint and a new connection each time.
    """
    if not connection.in_atomic_block and connection.vendor != "sqlite":
        connection.close_if_unusable_or_obsolete()


def worker_identity() -> str:
    """Name this executor uniquely: host, process and a nonce for this execution."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class SourceBusy(Exception):
    """The source already has a backup (or in-place restore) queued or running."""

    def __init__(self, source: Source, active: Run | None) -> None:
        self.active = active
        what = f"{active.kind} #{active.pk} ({active.status})" if active else "another run"
        super().__init__(
            f"Source {source.name!r} is busy: {what} is in progress. "
            "Wait for it to finish or cancel it."
        )


class RunHooks(Hooks):
    """Engine hooks backed by the Run row: progress, heartbeat, cancel, fenced publish."""

    def __init__(self, run: Run, *, interrupt: threading.Event | None = None) -> None:
        self.run = run
        self.warnings: list[str] = []
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self.current = Progress()
        self.listeners: list[Callable[[Progress], None]] = []
        self.interrupt = interrupt or threading.Event()
        self.interrupt_reason = "Interrupted (Ctrl-C or SIGTERM); nothing was published."
        timeout = run.source.run_timeout_s
        self.deadline = time.monotonic() + timeout if timeout else None
        self.timeout_s = timeout
        self._lost: EngineError | None = None
        self._log_dirty = False
        self._publishing = False
        self._published = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_loop, name=f"beat-{run.pk}", daemon=True)

    # Engine side -----------------------------------------------------------------------

    def progress(self, progress: Progress) -> None:
        self.current = progress
        for listener in self.listeners:
            listener(progress)

    def check(self) -> None:
        # Once the result is out, a cancel is too late: the run finishes as it is.
        if self._lost is not None and not (self._published and isinstance(self._lost, Cancelled)):
            raise self._lost
        if self.interrupt.is_set():
            raise Cancelled(self.interrupt_reason)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Cancelled(
                f"Timed out after {self.timeout_s} s (the policy's run timeout); "
                "nothing was published."
            )

    def publish(self, action: Callable[[], None]) -> None:
        """Claim the right to publish, then run `action` outside any transaction.

        A worker that lost the run, or whose run was cancelled, publishes nothing. A cancel
        that comes while `action` runs stops it where the engine checks (only where stopping
        is safe); otherwise it is too late, and the run finishes.
        """
        connection_refresh()  # the engine may have outlasted the one opened before it
        if not self.run.mark_publishing():
            raise self._lost_reason()
        self._publishing = True
        try:
            action()
        finally:
            self._publishing = False
        self._published = True
        if Run.objects.filter(pk=self.run.pk, cancel_requested=True).exists():
            self.log("A cancel came while the result was being published: too late to cancel.")

    def warn(self, message: str) -> None:
        # Messages can quote file names, and a file name need not be UTF-8; the Run's
        # columns are text.
        message = printable(message)
        self.warnings.append(message)
        self.log(f"warning: {message}")

    def log(self, message: str) -> None:
        self.lines.append(f"{timezone.now():%H:%M:%S} {printable(message)}")
        self._log_dirty = True

    # Heartbeat side --------------------------------------------------------------------

    def start(self) -> None:
        """Start the heartbeat thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat thread; the caller writes the final state."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def log_text(self) -> str:
        """Return the log as the run stores it."""
        return Run.log_text(self.lines)

    def progress_fields(self) -> dict:
        """Return the progress columns of the Run for the latest progress snapshot."""
        progress = self.current
        return {
            "bytes_done": progress.bytes_done,
            "bytes_total": progress.bytes_total,
            "files_done": progress.files_done,
            "files_total": progress.files_total,
            "current_item": printable(progress.current)[-1000:],
        }

    def beat(self) -> bool:
        """Write heartbeat, progress and log if this worker still owns the run."""
        log = None
        if self._log_dirty:
            log = self.log_text()
            self._log_dirty = False
        if self.run.beat(log=log, **self.progress_fields()):
            return True
        reason = self._lost_reason()
        if isinstance(reason, Cancelled) or self._lost is None:
            self._lost = reason
        return False

    def _lost_reason(self) -> EngineError:
        """Say why this worker no longer owns the run: a cancel (still ours to end) or not."""
        state = Run.objects.filter(pk=self.run.pk).values("status", "cancel_requested").first()
        if state and state["cancel_requested"] and state["status"] == Run.Status.RUNNING:
            if self._publishing:
                return Cancelled("Cancelled on request while publishing.")
            return Cancelled("Cancelled on request; nothing was published.")
        return FencedError(
            f"Run #{self.run.pk} was taken from this worker "
            f"(now {state['status'] if state else 'deleted'}); stopping without publishing."
        )

    def _beat_loop(self) -> None:
        interval = min(1.0, settings.HEARTBEAT_INTERVAL_S)
        # A run silent for ABANDON_AFTER_S is taken by the reaper: past three quarters of
        # that, stop it with the reason rather than be fenced out later without one.
        give_up_s = settings.ABANDON_AFTER_S * 3 / 4
        last_beat = time.monotonic()
        try:
            while not self._stop.wait(interval):
                try:
                    self.beat()
                    last_beat = time.monotonic()
                except Exception as error:  # a database hiccup must not kill the run
                    logger.exception("heartbeat of run %s failed", self.run.pk)
                    connection_refresh()
                    silent_s = time.monotonic() - last_beat
                    if silent_s > give_up_s and self._lost is None:
                        self._lost = EngineError(
                            f"The database has refused this run's heartbeat for {silent_s:.0f} s "
                            f"({one_sentence(error)}); stopped before it would be declared "
                            "abandoned. Nothing was published."
                        )
        finally:
            connection.close()


def run_cancel(*, run: Run, user=None) -> bool:
    """Stop `run`: a queued run ends at once, a running one within a second or two.

    Return False when the run had already ended. The worker notices the request at its next
    heartbeat, stops, removes its temporary files and rolls a restore back.
    """
    who = user.get_username() if getattr(user, "is_authenticated", False) else "the system"
    was = run.request_cancel(f"Cancelled by {who} before it started.")
    if was == Run.Status.QUEUED:
        standing_refresh(run.source_id)  # it ended here, not in a worker
    if was is not None:
        audit_record(
            actor=user,
            action="run.cancel",
            outcome="succeeded",
            obj=run,
            source=run.source,
            detail={"kind": run.kind, "was": was},
        )
    return was is not None


def run_claim(run_id: int, worker: str) -> Run | None:
    """Take a queued run for `worker`, this process; None when someone else already took it."""
    return Run.objects.claim(run_id, worker)


def run_record_end(
    run: Run, hooks: RunHooks, result: dict | None, error: EngineError | None
) -> bool:
    """Write the run's final state through database hiccups; return whether it was written.

    False also when another worker or the reaper ended the run meanwhile.
    """
    final = {"log": hooks.log_text(), **hooks.progress_fields()}
    if error is None:
        fields = {**final, **(result or {})}

        def write() -> bool:
            return run.mark_succeeded(warnings=hooks.warnings, **fields)
    elif isinstance(error, Cancelled):

        def write() -> bool:
            return run.mark_cancelled(str(error), **final)
    else:

        def write() -> bool:
            return run.mark_failed(str(error), warnings=hooks.warnings, **final)

    for delay in (*END_WRITE_DELAYS_S, None):
        try:
            connection_refresh()
            with transaction.atomic():
                return write()
        except DatabaseError as problem:
            if delay is None:
                run.status = Run.Status.RUNNING
                logger.error(
                    "run %s: its end could not be recorded (%s); it stays running until the "
                    "reaper declares it abandoned",
                    run.pk,
                    one_sentence(problem),
                )
                return False
            logger.warning(
                "run %s: recording its end failed (%s); trying again in %s s",
                run.pk,
                one_sentence(problem),
                delay,
            )
            time.sleep(delay)
    return False


def run_reread(run: Run) -> Run:
    """Return `run` as the database has it, or as this process knows it if it cannot tell."""
    try:
        run.refresh_from_db()
    except DatabaseError as problem:
        logger.error("run %s: reading its final state failed (%s)", run.pk, one_sentence(problem))
    return run


def _dead_owners() -> list[tuple[int, str, str]]:
    """Return (id, worker, why) of the running runs whose process died on this host."""
    here = this_process()
    running = Run.objects.filter(status=Run.Status.RUNNING, worker_host=here.host).only(
        "pk", "status", "worker", "worker_host", "worker_pid", "worker_started", "worker_pid_ns"
    )
    return [(run.pk, run.worker, why) for run in running if (why := run.owner_gone())]


def reap_abandoned(*, now=None) -> list[int]:
    """Mark runs whose executor died as abandoned, and remove their temporary files.

    A run whose process is gone from this host is reaped at once. Any other is reaped
    only when its heartbeat is older than ABANDON_AFTER_S by the database's clock, the
    one every heartbeat is written with, so a live run, which beats every second, is
    never declared dead, whatever the clocks of the hosts say. `now` replaces the
    database's clock (for tests). A reaped restore is rolled back from its journal in
    STATE_DIR, and so is any other restore that died on this host.
    """
    clock = Now() if now is None else Value(now, output_field=DateTimeField())
    cutoff = clock - Value(timedelta(seconds=settings.ABANDON_AFTER_S))
    stale = Run.objects.filter(status=Run.Status.RUNNING, heartbeat_at__lt=cutoff)
    # Conditional on the heartbeat being still stale: a run that beat in between lives.
    candidates = [
        ({"heartbeat_at__lt": cutoff}, _silent_reason(heartbeat), pk)
        for pk, heartbeat in stale.values_list("pk", "heartbeat_at")
    ]
    seen = {pk for _, _, pk in candidates}
    # Conditional on the owner seen: it cannot change while the run is running.
    candidates += [
        ({"worker": worker}, _gone_reason(why), pk)
        for pk, worker, why in _dead_owners()
        if pk not in seen
    ]
    reaped = []
    for condition, reason, pk in candidates:
        if Run.objects.abandon(pk, reason=reason, clock=clock, **condition):
            reaped.append(pk)
    reaped_runs = list(Run.objects.filter(pk__in=reaped).select_related("source", "storage"))
    for source_id in sorted({run.source_id for run in reaped_runs}):
        standing_refresh(source_id)
    for source_dir in {run.source.archive_dir for run in reaped_runs if run.storage_id is None}:
        remove_dead_temps(source_dir)
    for storage_row, slug in {
        (run.storage, run.source.slug) for run in reaped_runs if run.storage_id is not None
    }:
        try:
            remove_dead_uploads(storage_row.open(), slug)
        except EngineError as error:
            logger.warning("cleaning %s of storage %s failed: %s", slug, storage_row, error)
    # A run killed half-way through changing a target left a journal (only restores
    # write one) that puts the original back. Then any journal whose restore died on this
    # host (its lock is free), whatever became of its run.
    for run in reaped_runs:
        for action in recover_interrupted(settings.STATE_DIR, run=str(run.pk)):
            logger.warning("run %s: %s", run.pk, action)
    for action in recover_interrupted(settings.STATE_DIR):
        logger.warning("%s", action)
    return reaped


def _silent_reason(heartbeat) -> str:
    return (
        f"The worker stopped answering (no heartbeat since {heartbeat:%Y-%m-%d %H:%M:%S} "
        "UTC): it was killed or its host was lost. Temporary files were removed; "
        "the next scheduled run goes ahead."
    )


def _gone_reason(why: str) -> str:
    return (
        f"Its process was gone ({why}): it was killed or crashed. Temporary files were "
        "removed; the next scheduled run goes ahead."
    )


def temp_run_id(name: str) -> int | None:
    """Return the run id in a temporary file's name (`<stamp>-<id>.<ext>.tmp`)."""
    stem = name.split(".", 1)[0]
    head, _, tail = stem.rpartition("-")
    return int(tail) if head and tail.isdigit() else None


def remove_dead_temps(folder) -> list[str]:
    """Remove what dead runs left in `folder`; return the names removed.

    That is `.tmp` files of runs that are no longer active, and a sidecar or manifest whose
    archive never reached its name (a crash between the renames of the commit).
    """
    folder = Path(folder)
    temps = list(stale_temps(folder))
    orphans = [
        path
        for pattern in ("*.manifest.json", "*.manifest.json.age")
        for path in folder.glob(pattern)
        if not any(
            not sibling.name.endswith((".json", ".json.age", ".sha256", ".tmp"))
            for sibling in folder.glob(path.name.split(".", 1)[0] + ".*")
        )
    ]
    ids = {temp_run_id(path.name) for path in temps + orphans}
    live = set(
        Run.objects.filter(pk__in=ids - {None}, status__in=Run.ACTIVE).values_list("pk", flat=True)
    )
    removed = []
    for path in temps:
        run_id = temp_run_id(path.name)
        if run_id is not None and run_id not in live:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    for manifest in orphans:
        run_id = temp_run_id(manifest.name)
        if run_id is None or run_id in live:
            continue
        stem = manifest.name.split(".", 1)[0]
        for path in [manifest, *folder.glob(f"{stem}.*.sha256")]:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _live_ids(ids: set) -> set[int]:
    """Return which of the run ids `ids` still write: active runs, and backups being copied."""
    ids = ids - {None}
    live = set(Run.objects.filter(pk__in=ids, status__in=Run.ACTIVE).values_list("pk", flat=True))
    # A copy writes under its backup's name: the backup's files are live while it runs.
    live |= set(
        Run.objects.filter(
            backup_id__in=ids, kind=Run.Kind.COPY, status__in=Run.ACTIVE
        ).values_list("backup_id", flat=True)
    )
    return live


def _abort_dead(storage, pending) -> list[str]:
    """Abort the incomplete writes among `pending` whose run no longer writes; return keys."""
    live = _live_ids({temp_run_id(item.key.rpartition("/")[2]) for item in pending})
    aborted = []
    for item in pending:
        run_id = temp_run_id(item.key.rpartition("/")[2])
        if run_id is not None and run_id not in live:
            storage.abort(item)
            aborted.append(item.key)
    return aborted


def abort_dead_uploads(storages) -> list[str]:
    """Abort, in each of the storage rows `storages`, the incomplete writes of dead runs.

    A run that failed while its storage was unreachable (a network cut, the S3 server
    down) could not abort its upload then; housekeeping does it once the storage answers.
    A storage that cannot be listed now is skipped and tried at the next pass.
    """
    aborted = []
    for row in storages:
        try:
            storage = row.open()
            aborted += [f"{row.name}:{key}" for key in _abort_dead(storage, storage.pending(""))]
        except EngineError as error:
            logger.info("incomplete uploads of storage %s not checked: %s", row.name, error)
    return aborted


def remove_dead_uploads(storage, folder: str) -> list[str]:
    """Abort what dead runs left in the folder `folder` of an engine `storage`; return keys.

    That is incomplete writes (`.tmp` files, S3 multipart uploads) of runs that are no
    longer active, and a sidecar or manifest whose archive was never published (a crash
    between publishing the small files and the archive).
    """
    names = [entry.name for entry in storage.list(folder) if not entry.is_folder]
    orphans = [
        name
        for name in names
        if name.endswith(".manifest.json")
        and not any(
            other.startswith(name.removesuffix(".manifest.json") + ".")
            and ".manifest.json" not in other
            and not other.endswith(".sha256")
            for other in names
        )
    ]
    removed = _abort_dead(storage, storage.pending(folder))
    live = _live_ids({temp_run_id(name) for name in orphans})
    for manifest in orphans:
        run_id = temp_run_id(manifest)
        if run_id is None or run_id in live:
            continue
        stem = manifest.removesuffix(".manifest.json")
        for name in names:
            if name == manifest or (name.startswith(stem + ".") and name.endswith(".sha256")):
                storage.delete(f"{folder}/{name}")
                removed.append(f"{folder}/{name}")
    return removed
