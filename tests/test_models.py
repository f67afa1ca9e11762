"""Model rules: the per-source lock, state transitions, the bounded log.

The transitions are the ones the workers use: `Run.objects.claim`, `beat`, the `mark_*`
ends, `request_cancel`; the log is the one `RunHooks` writes and `append_log` extends.
"""

import pytest
from django.db import IntegrityError, transaction

from backups.models import LOG_LINES, Run
from backups.services.runs import RunHooks

pytestmark = pytest.mark.django_db


def test_a_second_backup_of_a_source_cannot_be_queued_while_one_is_active(source):
    Run.objects.create(source=source, kind=Run.Kind.BACKUP)
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(source=source, kind=Run.Kind.BACKUP)


def test_the_lock_is_released_when_the_run_finishes(source):
    first = Run.objects.claim(Run.objects.create(source=source).pk, "host:1:a")
    assert first.mark_failed("disk on fire") is True
    second = Run.objects.create(source=source)
    assert second.status == Run.Status.QUEUED


def test_a_verify_does_not_take_the_source_lock(source):
    Run.objects.create(source=source)
    verify = Run.objects.create(source=source, kind=Run.Kind.VERIFY, exclusive=False)
    assert verify.pk


def test_a_run_is_claimed_once(source):
    run = Run.objects.create(source=source)
    claimed = Run.objects.claim(run.pk, "host-a:1:x")
    assert claimed.status == Run.Status.RUNNING and claimed.worker == "host-a:1:x"
    assert claimed.worker_pid is not None and claimed.heartbeat_at is not None
    assert Run.objects.claim(run.pk, "host-b:2:y") is None


def test_mark_succeeded_with_warnings_ends_as_warning(source):
    run = Run.objects.claim(Run.objects.create(source=source).pk, "host:1:a")
    run.mark_succeeded(warnings=["a.txt changed while read"], size=10, sha256="ab" * 32)
    run.refresh_from_db()
    assert run.status == Run.Status.WARNING
    assert run.warnings == ["a.txt changed while read"]
    assert run.size == 10 and run.finished_at >= run.started_at


def test_a_copy_from_before_the_claim_can_neither_beat_nor_end_the_run(source):
    run = Run.objects.create(source=source)
    stale = Run.objects.get(pk=run.pk)
    claimed = Run.objects.claim(run.pk, "host:1:a")
    # A progress write from an old copy must not touch the run, nor put it back to queued.
    assert stale.beat(bytes_done=5) is False
    assert stale.mark_failed("too late") is False
    assert claimed.beat(bytes_done=7) is True
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING and run.bytes_done == 7 and run.error == ""


def test_a_cancel_ends_a_queued_run_and_flags_a_running_one(source, tmp_path):
    from backups.services.catalog import source_create

    other = source_create(name="other", kind="directory", location=str(tmp_path))
    queued = Run.objects.create(source=source)
    assert queued.request_cancel("Cancelled by ann before it started.") == "queued"
    queued.refresh_from_db()
    assert queued.status == Run.Status.CANCELLED and queued.error.startswith("Cancelled by ann")
    running = Run.objects.claim(Run.objects.create(source=other).pk, "host:1:a")
    assert running.request_cancel("unused") == "running"
    assert running.beat(bytes_done=1) is False  # the worker learns of it at its next beat
    running.refresh_from_db()
    assert running.status == Run.Status.RUNNING and running.cancel_requested
    assert queued.request_cancel("again") is None


def test_the_worker_log_keeps_only_its_newest_lines(source):
    run = Run.objects.claim(Run.objects.create(source=source).pk, "host:1:a")
    hooks = RunHooks(run)
    for index in range(LOG_LINES + 100):
        hooks.log(f"line {index:05d}")
    assert hooks.beat() is True
    run.refresh_from_db()
    lines = run.log.splitlines()
    assert len(lines) == LOG_LINES
    assert lines[0].endswith("line 00100")
    assert lines[-1].endswith(f"line {LOG_LINES + 99:05d}")


def test_a_note_after_the_end_keeps_the_log_within_the_same_bound(source):
    run = Run.objects.claim(Run.objects.create(source=source).pk, "host:1:a")
    hooks = RunHooks(run)
    for index in range(LOG_LINES):
        hooks.log(f"line {index:05d}")
    assert run.mark_succeeded(log=hooks.log_text()) is True
    run.append_log("starting what follows it failed: no verify")
    run.refresh_from_db()
    lines = run.log.splitlines()
    assert len(lines) == LOG_LINES
    assert lines[0].endswith("line 00001") and lines[-1].endswith("no verify")


def test_archive_stem_is_utc_timestamp_and_id(source):
    import datetime as dt

    run = Run.objects.create(source=source)
    run.started_at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert run.stem == f"20260102T010405Z-{run.pk}"
