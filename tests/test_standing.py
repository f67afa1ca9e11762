"""The stored standing: it follows every way a run ends, heals, and costs the same at any
history length."""

import random
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.core.management.color import no_style
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from backups import tasks
from backups.engine import compliance as rules
from backups.models import Manifest, Policy, RpoGap, Run, Source, SourceDay, SourceStanding
from backups.services.backup import backup_request
from backups.services.compliance import WINDOW, rpo_backup_times
from backups.services.execution import run_execute
from backups.services.runs import reap_abandoned
from backups.services.standing import standing_recompute, standing_refresh
from tests.cli_helpers import call_json
from tests.pages_helpers import make_policy, make_run, make_source

pytestmark = pytest.mark.django_db(transaction=True)


def status_of(name: str) -> dict:
    return next(s for s in call_json("status")["sources"] if s["name"] == name)


def corrupt(run: Run) -> None:
    data = bytearray(run.archive_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    run.archive_path.write_bytes(bytes(data))


@pytest.fixture
def backup(source):
    """A real backup of the fixture source, verified by the policy's follow-up check."""
    return Run.objects.get(pk=call_json("backup", source.name, "--inline")["id"])


# --- every way a run ends -------------------------------------------------------------


def test_a_backup_that_succeeds_is_the_standing_at_once(backup):
    status = status_of("files")
    assert status["last_backup"]["id"] == backup.pk
    assert status["last_success_at"] == backup.started_at.isoformat()
    assert (status["rpo_status"], status["integrity"], status["health"]) == ("ok", "ok", "ok")
    assert status["success_rate_30d"] == 1.0
    assert SourceStanding.objects.get(source=backup.source).last_success_id == backup.pk


def test_a_backup_that_fails_leaves_the_source_at_risk(backup, data_dir):
    data_dir.rename(data_dir.with_name("gone"))
    failed = call_json("backup", "files", "--inline", expect=1)
    status = status_of("files")
    assert status["last_backup"] == {
        **status["last_backup"],
        "id": failed["id"],
        "status": "failed",
    }
    assert status["last_success_at"] == backup.started_at.isoformat()
    assert status["health"] == "at_risk"
    assert status["success_rate_30d"] == 0.5


def test_a_backup_cancelled_while_running_is_the_newest_attempt(backup):
    run = backup_request(source=backup.source, trigger=Run.Trigger.CLI, enqueue=False)
    stop = threading.Event()
    stop.set()  # Ctrl-C before the first file
    assert run_execute(run.pk, interrupt=stop).status == Run.Status.CANCELLED
    status = status_of("files")
    assert (status["last_backup"]["id"], status["last_backup"]["status"]) == (run.pk, "cancelled")
    # A cancelled backup neither succeeded nor failed.
    assert status["success_rate_30d"] == 1.0 and status["health"] == "ok"


def test_a_queued_backup_cancelled_is_the_newest_attempt(backup):
    run = backup_request(source=backup.source, trigger=Run.Trigger.CLI, enqueue=False)
    call_command("cancel", str(run.pk), stdout=StringIO())
    assert SourceStanding.objects.get(source=backup.source).last_backup_id == run.pk
    assert status_of("files")["last_backup"]["status"] == "cancelled"


def test_an_abandoned_backup_counts_as_failed(backup, settings):
    hour_ago = timezone.now() - timedelta(hours=1)
    Run.objects.filter(pk=backup.pk).update(queued_at=hour_ago, started_at=hour_ago)
    standing_refresh(backup.source_id, since=hour_ago)
    stale = timezone.now() - timedelta(seconds=settings.ABANDON_AFTER_S + 60)
    dead = Run.objects.create(
        source=backup.source,
        status=Run.Status.RUNNING,
        queued_at=stale,
        started_at=stale,
        heartbeat_at=stale,
        worker="lost-host:1:x",
    )
    # The reaper itself (housekeeping's first chore; its recompute would hide a miss).
    assert reap_abandoned() == [dead.pk]
    status = status_of("files")
    assert (status["last_backup"]["id"], status["last_backup"]["status"]) == (dead.pk, "abandoned")
    assert status["health"] == "at_risk" and status["success_rate_30d"] == 0.5


def test_a_verification_that_passes_proves_integrity(source, policy):
    Policy.objects.filter(pk=policy.pk).update(verify_after_backup=False)
    made = call_json("backup", "files", "--inline")
    assert status_of("files")["integrity"] == "unknown"
    call_json("verify", str(made["id"]), "--inline")
    status = status_of("files")
    assert (status["integrity"], status["health"]) == ("ok", "ok")
    assert status["verified_at"] == made["started_at"]


def test_a_failed_verification_breaches_the_source(backup):
    corrupt(backup)
    call_json("verify", str(backup.pk), "--inline", expect=1)
    status = status_of("files")
    assert (status["integrity"], status["health"]) == ("failed", "breached")
    assert status["verified_at"] is None  # its only verified backup failed its new check


def test_a_drill_proves_the_rto(backup):
    drill = call_json("verify", str(backup.pk), "--drill", "--inline")
    status = status_of("files")
    stored = Run.objects.get(pk=drill["id"])
    assert status["rto_status"] == "ok"
    assert status["last_drill_s"] == round(stored.restore_seconds, 3)
    assert status["last_drill_at"] == stored.finished_at.isoformat()


def test_a_timed_restore_proves_the_rto(backup, tmp_path):
    restore = call_json("restore", str(backup.pk), "--to", str(tmp_path / "back"), "--inline")
    stored = Run.objects.get(pk=restore["id"])
    status = status_of("files")
    assert status["last_drill_at"] == stored.finished_at.isoformat()
    assert status["rto_status"] == "ok"


def test_a_backup_whose_removal_a_dead_pruner_left_comes_back(source):
    older = Run.objects.get(pk=call_json("backup", "files", "--inline")["id"])
    newest = Run.objects.get(pk=call_json("backup", "files", "--inline")["id"])
    # A pruner died while removing the newest backup, which a user pinned meanwhile.
    Run.objects.filter(pk=newest.pk).update(
        status=Run.Status.PRUNING, keep=True, worker="gone:1:x", heartbeat_at=timezone.now()
    )
    standing_refresh(source.pk)  # as the pruner's claim did
    assert status_of("files")["last_success_at"] == older.started_at.isoformat()
    Run.objects.filter(pk=newest.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    call_json("prune", "--source", "files")
    assert status_of("files")["last_success_at"] == newest.started_at.isoformat()


def test_backups_retention_removed_still_count_for_the_30_days(source, policy):
    made = [call_json("backup", "files", "--inline")["id"] for _ in range(3)]
    Policy.objects.filter(pk=policy.pk).update(keep_last=1)
    report = call_json("prune", "--source", "files")
    assert sorted(entry["id"] for entry in report["remove"]) == made[:2]
    status = status_of("files")
    assert status["last_backup"]["id"] == made[2]
    assert status["success_rate_30d"] == 1.0
    assert SourceDay.objects.get(source=source).succeeded == 3


def test_import_fills_the_standing_of_a_rebuilt_catalog(source):
    call_json("backup", "files", "--inline")
    made = call_json("backup", "files", "--inline")
    Manifest.objects.all().delete()
    Run.objects.filter(kind="verify").delete()
    Run.objects.all().delete()
    Source.objects.all().delete()
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(no_style(), [Run]):
            cursor.execute(sql)
    call_json("import_archives")
    status = status_of("files")
    assert status["last_success_at"] == made["started_at"]
    assert status["last_backup"]["id"] == made["id"]
    assert status["success_rate_30d"] == 1.0


# --- healing ----------------------------------------------------------------------------


def _corrupt_standing(source) -> None:
    SourceStanding.objects.filter(source=source).update(
        last_success=None,
        last_success_at=None,
        integrity="failed",
        recomputed_at=timezone.now() - timedelta(days=9),
    )
    SourceDay.objects.filter(source=source).update(succeeded=7, failed=3)
    now = timezone.now().timestamp()
    RpoGap.objects.create(source=source, start_s=now - 7200, end_s=now - 60)


def _gaps(source) -> list:
    return sorted(RpoGap.objects.filter(source=source).values_list("start_s", "end_s"))


def _assert_healed(source, backup, gaps) -> None:
    status = status_of("files")
    assert status["last_success_at"] == backup.started_at.isoformat()
    assert (status["integrity"], status["health"]) == ("ok", "ok")
    assert status["success_rate_30d"] == 1.0
    assert _gaps(source) == gaps


def test_housekeeping_heals_a_corrupted_standing(backup):
    source = backup.source
    gaps = _gaps(source)  # the moments before the first backup, out of target
    _corrupt_standing(source)
    assert status_of("files")["health"] == "breached"
    tasks.housekeeping()
    _assert_healed(source, backup, gaps)


def test_the_recompute_command_heals_a_corrupted_standing(backup):
    gaps = _gaps(backup.source)
    _corrupt_standing(backup.source)
    out = StringIO()
    call_command("recompute_standing", "--source", "files", stdout=out)
    assert "1 source(s)" in out.getvalue()
    _assert_healed(backup.source, backup, gaps)


def test_the_recompute_command_names_an_unknown_source():
    with pytest.raises(CommandError) as caught:
        call_command("recompute_standing", "--source", "nope", stdout=StringIO())
    assert caught.value.returncode == 2 and "'nope'" in str(caught.value)


def _stored(source) -> tuple:
    row = SourceStanding.objects.filter(source=source).values().get()
    for volatile in ("refreshed_at", "recomputed_at"):
        row.pop(volatile)
    days = list(SourceDay.objects.filter(source=source).order_by("day").values())
    gaps = sorted(RpoGap.objects.filter(source=source).values_list("start_s", "end_s"))
    return row, days, gaps


def test_refreshes_as_runs_end_agree_with_a_full_recompute():
    policy = make_policy(rpo_s=5400)
    source = make_source("flaky", policy=policy)
    Source.objects.filter(pk=source.pk).update(created_at=timezone.now() - timedelta(days=6))
    source.refresh_from_db()
    chance = random.Random(7)
    # Five days of hourly slots, oldest first, as runs end in real life: some skipped,
    # some failed or cancelled, a few late; each one refreshed as it ends.
    for hours in range(5 * 24, 0, -1):
        roll = chance.random()
        if roll < 0.1:
            continue
        status = "failed" if roll < 0.2 else "cancelled" if roll < 0.25 else "succeeded"
        late = 1200 if chance.random() < 0.1 else 20
        run = Run.objects.create(
            source=source,
            status=status,
            queued_at=timezone.now() - timedelta(seconds=hours * 3600 - late),
            started_at=timezone.now() - timedelta(seconds=hours * 3600 - late - 5),
            finished_at=timezone.now() - timedelta(seconds=hours * 3600 - late - 65),
        )
        standing_refresh(run.source_id)
    refreshed = _stored(source)
    assert refreshed[1] and refreshed[2], "the history has days and gaps to compare"
    standing_recompute(source_ids=[source.pk])
    assert _stored(source) == refreshed


def test_a_new_rpo_is_applied_to_the_whole_window_by_housekeeping(source, policy):
    now = timezone.now()
    Source.objects.filter(pk=source.pk).update(created_at=now - timedelta(days=40))
    for hours in range(0, 48, 3):
        make_run(source, ago_s=hours * 3600 + 600)
    before = status_of("files")["within_target_30d"]
    policy.rpo_s = 4 * 3600
    policy.save()
    # Measured against the old target: not stated until derived again.
    assert status_of("files")["within_target_30d"] is None
    tasks.housekeeping()
    after = status_of("files")["within_target_30d"]
    moment = timezone.now()
    fresh = Source.objects.get(pk=source.pk)
    expected = rules.within_target_share(
        backup_times=rpo_backup_times(fresh, moment - WINDOW, moment),
        rpo_s=4 * 3600,
        start=moment - WINDOW,
        end=moment,
        first_known=fresh.created_at,
    )
    assert after == pytest.approx(expected, abs=1e-4)
    assert after > before


# --- one home for the verdicts, and the cost ------------------------------------------


def _metric_samples(client) -> dict:
    samples = {}
    for family in text_string_to_metric_families(client.get("/metrics").content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_the_overview_status_and_metrics_give_each_source_the_same_health(client, viewer):
    policy = make_policy()
    for index, (ago, failed) in enumerate([(5 * 3600, False), (600, True), (None, False)]):
        source = make_source(f"s{index}", policy=policy)
        if ago is not None:
            make_run(source, ago_s=ago)
        if failed:
            make_run(source, status="failed", ago_s=300)
    client.force_login(viewer)
    page = {
        row.source.name: str(row.health)
        for row in client.get(reverse("overview")).context["pager"].items
    }
    status = {entry["name"]: entry["health"] for entry in call_json("status")["sources"]}
    samples = _metric_samples(client)
    scraped = {
        name: next(
            health
            for health in ("breached", "at_risk", "never", "ok")
            if samples[("backup_health", (("source", name), ("status", health)))] == 1
        )
        for name in page
    }
    assert page == status == scraped == {"s0": "breached", "s1": "at_risk", "s2": "never"}


def _history(runs_per_source: int) -> None:
    policy = make_policy()
    for index in range(3):
        source = make_source(f"h{index}", policy=policy)
        for hours in range(runs_per_source):
            backup = make_run(source, ago_s=(hours + 1) * 3600, verified=hours == 0)
            make_run(source, kind="verify", ago_s=(hours + 1) * 3600 - 60, backup=backup,
                     exclusive=False, drill=hours % 5 == 0, restore_seconds=3.0)  # fmt: skip
        make_run(source, status="running", ago_s=5)


def _queries(action) -> int:
    with CaptureQueriesContext(connection) as queries:
        action()
    return len(queries)


@pytest.mark.parametrize("runs_per_source", [1, 40])
def test_pages_status_and_metrics_cost_the_same_queries_at_any_history(
    client, viewer, runs_per_source
):
    _history(runs_per_source)
    client.force_login(viewer)
    costs = {
        # 2 (session, user) + 2 (the viewer's permissions: the page needs view_source) + 3
        # (the sources with their stored standing, the runs in progress, the schedules) + 1
        # (the last 24 hours' activity) + 2 (the firing alerts, the silences in force).
        "overview": (lambda: client.get(reverse("overview")), 10),
        # 2 + 1 (the source) + 5 (standing, runs in progress, 30-day counts, RPO gaps,
        # schedules) + 1 (runs page) + 1 (restore points) + 2 (retention) + 3 (charts)
        # + 2 (the viewer's permissions) + 1 (slots skipped recently) + 2 (the source's
        # alerts, the silences in force) + 1 (the restore points' proven copies) + 1 (the
        # copies in storages with their own retention rules, for the retention preview).
        "source page": (lambda: client.get(reverse("source-detail", args=["h0"])), 22),
        # The 5 of the standing, nothing else.
        "status": (lambda: call_json("status"), 5),
        # 2 (the logged-in client's session and user; a scraper has none) + the 5 of the
        # standing + 1 (runs in progress by kind; sources by kind come from the standing)
        # + 2 (when a worker last ran housekeeping, the firing alerts by condition).
        "metrics": (lambda: client.get("/metrics"), 10),
    }
    measured = {name: _queries(action) for name, (action, _n) in costs.items()}
    assert measured == {name: count for name, (_a, count) in costs.items()}


def test_the_migration_fills_the_standing_of_an_existing_catalog():
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    executor.migrate([("backups", "0008_run_owner")])
    apps = executor.loader.project_state([("backups", "0008_run_owner")]).apps
    old_source = apps.get_model("backups", "Source").objects.create(
        name="legacy", slug="legacy", kind="directory", location="/srv/legacy"
    )
    started = timezone.now() - timedelta(hours=1)
    old_run = apps.get_model("backups", "Run").objects.create(
        source=old_source,
        kind="backup",
        status="succeeded",
        exclusive=True,
        queued_at=started,
        started_at=started,
        finished_at=started + timedelta(seconds=30),
    )
    executor = MigrationExecutor(connection)
    executor.migrate(leaves)
    stored = SourceStanding.objects.get(source_id=old_source.pk)
    assert (stored.last_success_id, stored.last_success_at) == (old_run.pk, started)
    assert SourceDay.objects.get(source_id=old_source.pk).succeeded == 1
