"""Executing runs: claimed once, heartbeat with fencing, cancellation, the reaper."""

from datetime import timedelta

import pytest
from django.utils import timezone

from backups.engine.errors import Cancelled, FencedError
from backups.engine.hooks import Progress
from backups.models import Run
from backups.services.runs import (
    RunHooks,
    reap_abandoned,
    remove_dead_temps,
    run_cancel,
    run_claim,
    temp_run_id,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(source):
    run = Run.objects.create(source=source)
    return run_claim(run.pk, "host-a:1:abcd")


def test_a_run_is_claimed_once_even_when_delivered_twice(source):
    run = Run.objects.create(source=source)
    assert run_claim(run.pk, "host-a:1:x") is not None
    assert run_claim(run.pk, "host-b:2:y") is None
    run.refresh_from_db()
    assert run.worker == "host-a:1:x" and run.status == Run.Status.RUNNING


def test_a_beat_writes_progress_while_the_worker_owns_the_run(running):
    hooks = RunHooks(running)
    hooks.progress(Progress(bytes_done=10, bytes_total=100, files_done=1, current="a.txt"))
    assert hooks.beat() is True
    running.refresh_from_db()
    assert (running.bytes_done, running.bytes_total, running.current_item) == (10, 100, "a.txt")


def test_a_worker_whose_run_was_declared_abandoned_is_fenced_out(running):
    hooks = RunHooks(running)
    Run.objects.filter(pk=running.pk).update(status=Run.Status.ABANDONED)
    assert hooks.beat() is False
    with pytest.raises(FencedError):
        hooks.check()
    published = []
    with pytest.raises(FencedError):
        hooks.publish(lambda: published.append(True))
    assert published == []


def test_a_fenced_worker_cannot_overwrite_the_abandoned_verdict(running):
    Run.objects.filter(pk=running.pk).update(status=Run.Status.ABANDONED)
    assert running.mark_succeeded(size=1) is False
    running.refresh_from_db()
    assert running.status == Run.Status.ABANDONED


def test_a_cancel_request_stops_the_run_at_its_next_check(running):
    hooks = RunHooks(running)
    Run.objects.filter(pk=running.pk).update(cancel_requested=True)
    hooks.beat()
    with pytest.raises(Cancelled, match="Cancelled on request"):
        hooks.check()


def test_a_cancel_landing_just_before_publishing_ends_the_run_as_cancelled(running):
    # Reported as a cancel, not as fencing: the worker still ends the run itself, with its
    # log and, for a restore, the audit record of the outcome.
    hooks = RunHooks(running)
    Run.objects.filter(pk=running.pk).update(cancel_requested=True)
    published = []
    with pytest.raises(Cancelled, match="Cancelled on request"):
        hooks.publish(lambda: published.append(True))
    assert published == []


def test_publishing_is_claimed_on_the_run_and_runs_outside_any_transaction(running):
    from django.db import connection

    hooks = RunHooks(running)
    seen = []
    hooks.publish(lambda: seen.append(len(connection.atomic_blocks)))
    running.refresh_from_db()
    assert running.publishing_at is not None
    # The test itself runs inside a transaction; publishing must open none of its own.
    assert seen == [len(connection.atomic_blocks)]


def test_a_cancel_during_a_step_that_cannot_stop_is_too_late_and_the_step_finishes(running):
    hooks = RunHooks(running)
    published = []

    def swap():
        run_cancel(run=running)
        hooks.beat()  # the heartbeat thread learns of the cancel
        published.append(True)

    hooks.publish(swap)

    assert published == [True]
    assert "too late to cancel" in hooks.log_text()
    hooks.check()  # the run goes on to record its result


def test_a_cancel_during_a_step_that_can_stop_stops_it(running):
    hooks = RunHooks(running)

    def load():
        run_cancel(run=running)
        hooks.beat()
        hooks.check()  # where the step may stop, as pg_restore's wait does

    with pytest.raises(Cancelled, match="^Cancelled on request while publishing"):
        hooks.publish(load)
    assert "too late" not in hooks.log_text()


def test_the_policy_timeout_cancels_a_run_that_takes_too_long(running):
    hooks = RunHooks(running)
    hooks.deadline = 0
    with pytest.raises(Cancelled, match="Timed out"):
        hooks.check()


def test_the_reaper_abandons_only_runs_whose_heartbeat_stopped(source, settings, tmp_path):
    from backups.services.catalog import source_create

    other = source_create(name="other", kind="directory", location=str(tmp_path))
    now = timezone.now()
    dead = run_claim(Run.objects.create(source=source).pk, "gone:1:a")
    alive = run_claim(Run.objects.create(source=other).pk, "here:2:b")
    Run.objects.filter(pk=dead.pk).update(heartbeat_at=now - timedelta(seconds=600))
    Run.objects.filter(pk=alive.pk).update(heartbeat_at=now - timedelta(seconds=5))
    folder = source.archive_dir
    folder.mkdir(parents=True)
    (folder / f"20260101T000000Z-{dead.pk}.tar.zst.tmp").write_bytes(b"partial")
    (folder / f"20260101T000000Z-{dead.pk}.tar.zst").write_bytes(b"complete")

    assert reap_abandoned(now=now) == [dead.pk]

    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.status == Run.Status.ABANDONED and "heartbeat" in dead.error
    assert alive.status == Run.Status.RUNNING
    assert sorted(p.name for p in folder.iterdir()) == [f"20260101T000000Z-{dead.pk}.tar.zst"]


def test_temps_of_a_live_run_are_kept(running):
    folder = running.source.archive_dir
    folder.mkdir(parents=True)
    live = folder / f"{running.stem}.tar.zst.tmp"
    live.write_bytes(b"being written")
    assert remove_dead_temps(folder) == []
    assert live.exists()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("20260101T000000Z-42.tar.zst.tmp", 42),
        ("20260101T000000Z-7.manifest.json.tmp", 7),
        ("20260101T000000Z-7.snapshot.tmp", 7),
        ("notes.tmp", None),
    ],
)
def test_temp_names_carry_their_run_id(name, expected):
    assert temp_run_id(name) == expected


def test_a_sidecar_and_manifest_without_their_archive_are_removed(source):
    dead = Run.objects.create(source=source, status=Run.Status.FAILED)
    folder = source.archive_dir
    folder.mkdir(parents=True)
    stem = f"20260101T000000Z-{dead.pk}"
    (folder / f"{stem}.manifest.json").write_text("{}")
    (folder / f"{stem}.tar.zst.sha256").write_text("x")
    complete = f"20260102T000000Z-{dead.pk + 100}"
    for name in (f"{complete}.tar.zst", f"{complete}.tar.zst.sha256", f"{complete}.manifest.json"):
        (folder / name).write_text("kept")
    assert sorted(remove_dead_temps(folder)) == [
        f"{stem}.manifest.json",
        f"{stem}.tar.zst.sha256",
    ]
    assert len(list(folder.iterdir())) == 3


@pytest.mark.django_db(transaction=True)
def test_a_run_stopped_by_the_queues_task_timeout_ends_cancelled_without_leftovers(stalled_pod):
    from django_q.exceptions import TimeoutException
    from django_q.timeout import TimeoutHandler

    from backups.services.backup import backup_request
    from backups.tasks import execute_run

    run = backup_request(source=stalled_pod, trigger="api", enqueue=False)
    # What a django-q2 worker does around every task, with a one-second timeout.
    with pytest.raises(TimeoutException), TimeoutHandler(1):
        execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert run.error.startswith("Stopped: its process was told to exit (TimeoutException: ")
    assert list(stalled_pod.archive_dir.iterdir()) == []
