"""Execute a run: claim it once, keep its heartbeat, report progress, fence its commit.

Whoever executes a run (a django-q worker, or the CLI with `--inline`) calls `run_execute`.
It claims the run with a conditional UPDATE, so a run delivered twice executes once. A
thread then refreshes the heartbeat and the progress once a second with another
conditional UPDATE that only matches while this worker still owns the run and nobody asked
to cancel it: when it stops matching, the engine's next `check()` stops the work, and
`publish()` re-checks ownership inside the transaction that commits the result.
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
from django.db import close_old_connections, connection, transaction
from django.db.models import DateTimeField, F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from backups.engine.atomic import stale_temps
from backups.engine.errors import Cancelled, EngineError, FencedError
from backups.engine.hooks import Hooks, Progress
from backups.models import Run
from backups.services.standing import standing_refresh

logger = logging.getLogger(__name__)

LOG_LINES = 400


def worker_identity() -> str:
    """Name this executor uniquely: host, process and a nonce for this execution."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


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
        timeout = run.source.policy.run_timeout_s if run.source.policy_id else 3600
        self.deadline = time.monotonic() + timeout if timeout else None
        self.timeout_s = timeout
        self._lost: EngineError | None = None
        self._log_dirty = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_loop, name=f"beat-{run.pk}", daemon=True)

    # Engine side -----------------------------------------------------------------------

    def progress(self, progress: Progress) -> None:
        self.current = progress
        for listener in self.listeners:
            listener(progress)

    def check(self) -> None:
        if self._lost is not None:
            raise self._lost
        if self.interrupt.is_set():
            raise Cancelled(self.interrupt_reason)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Cancelled(
                f"Timed out after {self.timeout_s} s (the policy's run timeout); "
                "nothing was published."
            )

    def publish(self, action: Callable[[], None]) -> None:
        with transaction.atomic():
            owned = (
                Run.objects.select_for_update()
                .filter(
                    pk=self.run.pk,
                    status=Run.Status.RUNNING,
                    worker=self.run.worker,
                    cancel_requested=False,
                )
                .exists()
            )
            if not owned:
                raise self._lost_reason()
            action()

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log(f"warning: {message}")

    def log(self, message: str) -> None:
        self.lines.append(f"{timezone.now():%H:%M:%S} {message}")
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
        return "\n".join(self.lines) + ("\n" if self.lines else "")

    def progress_fields(self) -> dict:
        """Return the progress columns of the Run for the latest progress snapshot."""
        progress = self.current
        return {
            "bytes_done": progress.bytes_done,
            "bytes_total": progress.bytes_total,
            "files_done": progress.files_done,
            "files_total": progress.files_total,
            "current_item": progress.current[-1000:],
        }

    def beat(self) -> bool:
        """Write heartbeat, progress and log if this worker still owns the run."""
        values = {"heartbeat_at": timezone.now(), **self.progress_fields()}
        if self._log_dirty:
            values["log"] = self.log_text()
            self._log_dirty = False
        owned = Run.objects.filter(
            pk=self.run.pk,
            status=Run.Status.RUNNING,
            worker=self.run.worker,
            cancel_requested=False,
        )
        if owned.update(**values) == 1:
            return True
        reason = self._lost_reason()
        if isinstance(reason, Cancelled) or self._lost is None:
            self._lost = reason
        return False

    def _lost_reason(self) -> EngineError:
        """Say why this worker no longer owns the run: a cancel (still ours to end) or not."""
        state = Run.objects.filter(pk=self.run.pk).values("status", "cancel_requested").first()
        if state and state["cancel_requested"] and state["status"] == Run.Status.RUNNING:
            return Cancelled("Cancelled on request; nothing was published.")
        return FencedError(
            f"Run #{self.run.pk} was taken from this worker "
            f"(now {state['status'] if state else 'deleted'}); stopping without publishing."
        )

    def _beat_loop(self) -> None:
        interval = min(1.0, settings.HEARTBEAT_INTERVAL_S)
        try:
            while not self._stop.wait(interval):
                try:
                    self.beat()
                except Exception:  # a database hiccup must not kill the run; retry next beat
                    logger.exception("heartbeat of run %s failed", self.run.pk)
        finally:
            connection.close()


def run_cancel(*, run: Run, user=None) -> bool:
    """Stop `run`: a queued run ends at once, a running one within a second or two.

    Return False when the run had already ended. The worker notices the request at its next
    heartbeat, stops, removes its temporary files and rolls a restore back.
    """
    from backups.audit import audit_record

    who = user.get_username() if getattr(user, "is_authenticated", False) else "the system"
    now = timezone.now()
    ended = Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
        status=Run.Status.CANCELLED,
        cancel_requested=True,
        started_at=now,
        finished_at=now,
        error=f"Cancelled by {who} before it started.",
    )
    flagged = ended or Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
        cancel_requested=True
    )
    if ended:
        standing_refresh(run.source_id)
    if flagged:
        audit_record(
            actor=user,
            action="run.cancel",
            outcome="succeeded",
            obj=run,
            source=run.source,
            detail={"kind": run.kind, "was": "queued" if ended else "running"},
        )
    return bool(flagged)


def run_claim(run_id: int, worker: str) -> Run | None:
    """Take a queued run for `worker`; None when someone else already took it."""
    now = timezone.now()
    claimed = Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(
        status=Run.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker
    )
    if not claimed:
        return None
    return Run.objects.select_related("source__policy", "backup").get(pk=run_id)


def _handler(kind: str):
    # Imported here: each workflow imports the engine, which the models do not need.
    if kind == Run.Kind.BACKUP:
        from backups.services.backup import backup_execute

        return backup_execute
    if kind == Run.Kind.RESTORE:
        from backups.services.restore import restore_execute

        return restore_execute
    from backups.services.verify import verify_execute

    return verify_execute


def run_execute(
    run_id: int,
    *,
    interrupt: threading.Event | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    inline: bool = False,
) -> Run:
    """Execute a queued run to its end and return it; a no-op if it was already claimed.

    `inline` (the CLI's `--inline`, no worker around): follow-up runs such as the
    verification a policy asks for run in this process too instead of being queued.
    """
    close_old_connections()
    run = run_claim(run_id, worker_identity())
    if run is None:
        logger.info("run %s was already claimed; not executing it twice", run_id)
        return Run.objects.get(pk=run_id)
    hooks = RunHooks(run, interrupt=interrupt)
    if on_progress:
        hooks.listeners.append(on_progress)
    hooks.start()
    result, error = None, None
    try:
        result = _handler(run.kind)(run, hooks)
    except FencedError as fenced:  # another worker or the reaper ends this run
        hooks.stop()
        logger.warning("run %s: %s", run.pk, fenced)
        run.refresh_from_db()
        return run
    except EngineError as failure:
        error = failure
    except Exception as failure:
        logger.exception("run %s failed unexpectedly", run.pk)
        error = EngineError(
            f"Internal error ({type(failure).__name__}: {failure}). Nothing was published; "
            "the worker log has the details."
        )
    hooks.stop()
    final = {"log": hooks.log_text(), **hooks.progress_fields()}
    if error is None:
        run.mark_succeeded(warnings=hooks.warnings, **final, **(result or {}))
        after_success(run, inline=inline)
    elif isinstance(error, Cancelled):
        run.mark_cancelled(str(error))
        Run.objects.filter(pk=run.pk).update(**final)
    else:
        run.mark_failed(str(error), warnings=hooks.warnings, **final)
    run.refresh_from_db()
    standing_refresh(run.source_id)
    after_finish(run)
    return run


def after_finish(run: Run) -> None:
    """Record what every ended run of its kind must leave behind (a restore's audit)."""
    if run.kind == Run.Kind.RESTORE:
        from backups.services.restore import restore_audit_outcome

        restore_audit_outcome(run)


def after_success(run: Run, *, inline: bool = False) -> None:
    """Start what follows a successful run (a verification after a backup, per policy)."""
    if run.kind == Run.Kind.BACKUP:
        from backups.services.backup import backup_after_success

        follow_up = backup_after_success(run, enqueue=not inline)
        if follow_up is not None and inline:
            run_execute(follow_up.pk, inline=True)


def reap_abandoned(*, now=None) -> list[int]:
    """Mark runs whose heartbeat stopped as abandoned, and remove their temporary files.

    Only runs whose heartbeat is older than ABANDON_AFTER_S are touched, so a live run,
    which beats every second, is never declared dead.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.ABANDON_AFTER_S)
    stale = list(
        Run.objects.filter(status=Run.Status.RUNNING, heartbeat_at__lt=cutoff).values_list(
            "pk", "heartbeat_at"
        )
    )
    reaped = []
    for pk, heartbeat in stale:
        # Conditional on the heartbeat we saw: a run that beat in between stays alive.
        reason = (
            f"The worker stopped answering (no heartbeat since {heartbeat:%Y-%m-%d %H:%M:%S} "
            "UTC): it was killed or its host was lost. Temporary files were removed; "
            "the next scheduled run goes ahead."
        )
        updated = Run.objects.filter(
            pk=pk, status=Run.Status.RUNNING, heartbeat_at=heartbeat
        ).update(
            status=Run.Status.ABANDONED,
            # Hosts' clocks differ: never end a run before the moment its worker started it.
            finished_at=Greatest(Value(now, output_field=DateTimeField()), F("started_at")),
            error=reason,
        )
        if updated:
            reaped.append(pk)
    reaped_runs = list(Run.objects.filter(pk__in=reaped).select_related("source"))
    for source_id in sorted({run.source_id for run in reaped_runs}):
        standing_refresh(source_id)
    for source_dir in {run.source.archive_dir for run in reaped_runs}:
        remove_dead_temps(source_dir)
    for run in reaped_runs:
        if run.kind == Run.Kind.RESTORE and run.target.startswith("/"):
            # An in-place restore killed half-way: its journal puts the original back.
            from backups.engine.restore import recover_interrupted

            for action in recover_interrupted(Path(run.target).parent):
                logger.warning("run %s: %s", run.pk, action)
    return reaped


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
        for path in folder.glob("*.manifest.json")
        if not any(
            not sibling.name.endswith((".json", ".sha256", ".tmp"))
            for sibling in folder.glob(path.name.removesuffix(".manifest.json") + ".*")
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
        stem = manifest.name.removesuffix(".manifest.json")
        for path in [manifest, *folder.glob(f"{stem}.*.sha256")]:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
