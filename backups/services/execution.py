"""Execute a run of any kind: one table says which workflow runs it and what follows it.

Whoever executes a run (a django-q worker, or the CLI with `--inline`) calls `run_execute`.
The life every run shares (claim, heartbeat, cancel, the fenced end, the reaper) is in
`runs`; each kind's work is its module's `*_execute` (`backup`, `restore`, `verify`).
What follows a run is decided here and nowhere else: the source's stored standing, a
verification after a backup when its policy asks for one, a prune after a scheduled
backup, the audit record of a restore's outcome, and the slot of a scheduled backup its
worker's shutdown stopped, handed to another worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import DatabaseError, close_old_connections

from backups.engine.errors import Cancelled, EngineError, FencedError
from backups.engine.hooks import Progress
from backups.models import Run
from backups.services.alerts import alerts_after_run
from backups.services.backup import backup_execute, backup_hand_over
from backups.services.copy import (
    archive_move,
    copies_after_backup,
    copy_execute,
    copy_record_outcome,
)
from backups.services.queue import prune_enqueue
from backups.services.restore import restore_audit_outcome, restore_execute
from backups.services.runbook import runbook_after_run
from backups.services.runs import (
    RunHooks,
    one_sentence,
    run_claim,
    run_record_end,
    run_reread,
    worker_identity,
)
from backups.services.standing import standing_refresh
from backups.services.verify import verify_execute, verify_request

logger = logging.getLogger(__name__)

# What executes each kind of run: a claimed run and its hooks in, the result fields out.
EXECUTORS: dict[str, Callable[[Run, RunHooks], dict]] = {
    Run.Kind.BACKUP: backup_execute,
    Run.Kind.RESTORE: restore_execute,
    Run.Kind.VERIFY: verify_execute,
    Run.Kind.COPY: copy_execute,
}


def run_execute(
    run_id: int,
    *,
    interrupt: threading.Event | None = None,
    interrupt_reason: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    inline: bool = False,
) -> Run:
    """Execute a queued run to its end and return it; a no-op if it was already claimed.

    Whatever goes wrong, the run ends `succeeded`, `warning`, `failed` or `cancelled` with
    a sentence in its error, and the traceback goes to the log; only a database that
    refuses every attempt to record the end leaves the run to the reaper. `interrupt`,
    once set, cancels the run with `interrupt_reason`. `inline` (the CLI's `--inline`, no
    worker around): follow-up runs such as the verification a policy asks for run in this
    process too instead of being queued.
    """
    close_old_connections()
    run = run_claim(run_id, worker_identity())
    if run is None:
        logger.info("run %s was already claimed; not executing it twice", run_id)
        return Run.objects.get(pk=run_id)
    hooks = RunHooks(run, interrupt=interrupt)
    if interrupt_reason:
        hooks.interrupt_reason = interrupt_reason
    if on_progress:
        hooks.listeners.append(on_progress)
    result, error = None, None
    try:
        hooks.start()
        result = EXECUTORS[run.kind](run, hooks)
    except FencedError as fenced:  # another worker or the reaper ends this run
        hooks.stop()
        logger.warning("run %s: %s", run.pk, fenced)
        return run_reread(run)
    except EngineError as failure:
        error = failure
    except Exception as failure:
        logger.exception("run %s failed unexpectedly", run.pk)
        error = EngineError(
            f"Internal error ({one_sentence(failure)}). Nothing was published; "
            "the worker log has the details."
        )
    except BaseException as failure:
        # The process is told to exit (KeyboardInterrupt, or the SystemExit of the
        # queue's task timeout): end the run before going, rather than leave it running.
        hooks.stop()
        run_record_end(
            run,
            hooks,
            None,
            Cancelled(
                f"Stopped: its process was told to exit ({one_sentence(failure)}); "
                "nothing was published."
            ),
        )
        raise
    hooks.stop()
    if error is not None and hooks.interrupt.is_set() and not isinstance(error, Cancelled):
        # A shutdown signal reaches the source's helper processes (kubectl, pg_dump) too,
        # which may fail first: the interrupt is what ended the run.
        error = Cancelled(hooks.interrupt_reason)
    ended = run_record_end(run, hooks, result, error)
    if ended and error is None:
        for follow_up in AFTER_SUCCESS.get(run.kind, ()):
            _follow_up(run, "starting what follows it", follow_up, run, inline=inline)
    run = run_reread(run)
    if ended:
        _follow_up(run, "refreshing its source's standing", standing_refresh, run.source_id)
        _follow_up(run, "judging its source's alerts", alerts_after_run, run, inline=inline)
        _follow_up(run, "writing its source's runbook", runbook_after_run, run)
        for follow_up in AFTER_END.get(run.kind, ()):
            _follow_up(run, "recording its outcome", follow_up, run)
        if hooks.interrupt.is_set():
            # Its worker is going (a host shutting down): another one takes the slot.
            _follow_up(run, "handing its slot over", backup_hand_over, run)
    return run


def _follow_up(run: Run, what: str, action: Callable, *args, **kwargs) -> None:
    """Do what follows a run's end; a failure there is logged and noted in the run's log."""
    try:
        action(*args, **kwargs)
    except Exception as problem:
        logger.exception("run %s: %s failed", run.pk, what)
        try:
            run.append_log(f"{what} failed: {one_sentence(problem)}")
        except DatabaseError:
            logger.exception("run %s: noting the failure in its log failed", run.pk)


def _verify_after_backup(run: Run, *, inline: bool) -> None:
    """Request the verification of a fresh backup when its policy asks for one."""
    policy = run.source.policy
    if policy is None or not policy.verify_after_backup:
        return
    check = verify_request(
        backup=run, trigger=run.trigger, user=run.requested_by, enqueue=not inline
    )
    if inline:
        run_execute(check.pk, inline=True)


def _copy_after_backup(run: Run, *, inline: bool) -> None:
    """Copy a fresh backup to each storage its policy copies to."""
    for copy in copies_after_backup(run, inline=inline):
        if inline:
            run_execute(copy.pk, inline=True)


def _archive_after_copy(run: Run, *, inline: bool) -> None:
    """Finish moving a backup to its archive storage once its copy there is proven."""
    archive_move(run.backup)


def _prune_after_scheduled_backup(run: Run, *, inline: bool) -> None:
    """Queue a prune of the source of a scheduled backup: retention follows the schedule."""
    if run.trigger == Run.Trigger.SCHEDULE:
        prune_enqueue(run)


# What follows a run that succeeded, by kind, in order; each failure is noted in its log.
AFTER_SUCCESS: dict[str, tuple[Callable[..., None], ...]] = {
    Run.Kind.BACKUP: (_verify_after_backup, _copy_after_backup, _prune_after_scheduled_backup),
    Run.Kind.COPY: (_archive_after_copy,),
}
# What follows every ended run (whatever its outcome), by kind.
AFTER_END: dict[str, tuple[Callable[[Run], None], ...]] = {
    Run.Kind.RESTORE: (restore_audit_outcome,),
    Run.Kind.COPY: (copy_record_outcome,),
}
