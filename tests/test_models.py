"""Model rules: the per-source lock, state transitions, the bounded log."""

import pytest
from django.db import IntegrityError, transaction

from backups.models import LOG_LIMIT_CHARS, Run

pytestmark = pytest.mark.django_db


def test_a_second_backup_of_a_source_cannot_be_queued_while_one_is_active(source):
    Run.objects.create(source=source, kind=Run.Kind.BACKUP)
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(source=source, kind=Run.Kind.BACKUP)


def test_the_lock_is_released_when_the_run_finishes(source):
    first = Run.objects.create(source=source)
    first.mark_running("host:1")
    first.mark_failed("disk on fire")
    second = Run.objects.create(source=source)
    assert second.status == Run.Status.QUEUED


def test_a_verify_does_not_take_the_source_lock(source):
    Run.objects.create(source=source)
    verify = Run.objects.create(source=source, kind=Run.Kind.VERIFY, exclusive=False)
    assert verify.pk


def test_mark_succeeded_with_warnings_ends_as_warning(source):
    run = Run.objects.create(source=source)
    run.mark_running("host:1")
    run.mark_succeeded(warnings=["a.txt changed while read"], size=10, sha256="ab" * 32)
    run.refresh_from_db()
    assert run.status == Run.Status.WARNING
    assert run.warnings == ["a.txt changed while read"]
    assert run.size == 10 and run.finished_at >= run.started_at


def test_transitions_save_only_their_fields(source):
    run = Run.objects.create(source=source)
    stale = Run.objects.get(pk=run.pk)
    run.mark_running("host:1")
    # A progress write from an old copy must not put the status back to queued.
    stale.beat(bytes_done=5)
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING and run.bytes_done == 5


def test_the_log_keeps_only_its_newest_lines(source):
    run = Run.objects.create(source=source)
    for index in range(3000):
        run.append_log(f"line {index:05d} " + "x" * 40)
    run.refresh_from_db()
    assert len(run.log) <= LOG_LIMIT_CHARS
    assert run.log.rstrip().endswith("x")
    assert "line 02999" in run.log and "line 00000" not in run.log


def test_archive_stem_is_utc_timestamp_and_id(source):
    import datetime as dt

    run = Run.objects.create(source=source)
    run.started_at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert run.stem == f"20260102T010405Z-{run.pk}"
