"""A run's page: status, live progress while it runs, results, errors, checks and log."""

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.pages_helpers import make_manifest, make_policy, make_run, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture
def web():
    return make_source("web", policy=make_policy())


def test_a_finished_backup_shows_its_archive_and_a_copyable_hash(client, viewer, web):
    run = make_run(web, ago_s=600, took_s=42)
    client.force_login(viewer)
    text = client.get(reverse("run-detail", args=[run.pk])).text
    assert run.archive in text
    # A plain selectable element and a button that copies it.
    assert f'<code id="sha256-{run.pk}" class="hash">{run.sha256}</code>' in text
    assert f'data-copy="sha256-{run.pk}"' in text
    assert 'value="100.0"' in text and "100 %" in text
    assert "hx-trigger" not in text  # nothing left to follow


def test_a_running_backup_polls_its_live_part_every_second(client, viewer, web, monkeypatch):
    frozen = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: frozen)  # the rate must not drift by the test
    run = make_run(
        web,
        status="running",
        ago_s=10,
        bytes_done=50 * 2**20,
        bytes_total=200 * 2**20,
        files_done=10,
        files_total=40,
        current_item="photos/2024/img_0042.jpg",
    )
    client.force_login(viewer)
    text = client.get(reverse("run-detail", args=[run.pk])).text
    assert f'hx-get="{reverse("run-live", args=[run.pk])}" hx-trigger="every 1s"' in text
    # Sizes in IEC units and durations in two units, as the command line writes them.
    assert "25 %" in text and "50.0 MiB of 200.0 MiB" in text and "10 of 40" in text
    assert "photos/2024/img_0042.jpg" in text
    assert "about 30s" in text  # 150 MiB left at 5 MiB/s (50 MiB in 10 s)


def test_the_live_part_stops_polling_once_the_run_has_ended(client, viewer, web):
    run = make_run(web, status="running", ago_s=10, bytes_done=1, bytes_total=4)
    client.force_login(viewer)
    live = client.get(reverse("run-live", args=[run.pk]), HTTP_HX_REQUEST="true")
    assert "hx-trigger" in live.text and "<html" not in live.text
    run.status = "succeeded"
    run.finished_at = run.started_at
    run.save()
    live = client.get(reverse("run-live", args=[run.pk]), HTTP_HX_REQUEST="true")
    assert "hx-trigger" not in live.text
    assert "succeeded" in live.text


def test_a_failure_is_explained_in_plain_words_with_the_log_tail(client, viewer, web):
    log = "".join(f"12:00:{i:02d} line {i}\n" for i in range(60))
    run = make_run(
        web,
        status="failed",
        ago_s=60,
        error="The source folder /srv/web is not readable: permission denied.",
        warnings=["skipped a socket"],
        log=log,
    )
    client.force_login(viewer)
    text = client.get(reverse("run-detail", args=[run.pk])).text
    assert 'role="alert"' in text and "permission denied." in text
    assert "skipped a socket" in text
    assert "line 59" in text and "line 19\n" not in text  # the last 40 lines
    assert "last 40 of 60 lines" in text


def test_a_verify_shows_its_checks(client, viewer, web):
    backup = make_run(web, ago_s=600)
    verify = make_run(
        web,
        kind="verify",
        ago_s=300,
        backup=backup,
        exclusive=False,
        checks=[
            {"name": "checksum", "ok": True, "detail": "matches the sidecar"},
            {"name": "contents", "ok": False, "detail": "a.txt differs"},
        ],
    )
    client.force_login(viewer)
    text = client.get(reverse("run-detail", args=[verify.pk])).text
    assert "matches the sidecar" in text and "a.txt differs" in text
    assert reverse("run-detail", args=[backup.pk]) in text
    # The backup's page lists the verification among the runs that read it.
    assert (
        reverse("run-detail", args=[verify.pk])
        in client.get(reverse("run-detail", args=[backup.pk])).text
    )


def test_a_restore_shows_its_target_paths_and_what_it_verified(client, viewer, web):
    backup = make_run(web, ago_s=600)
    restore = make_run(
        web,
        kind="restore",
        ago_s=60,
        backup=backup,
        target="/srv/restored",
        paths=["docs"],
        exclusive=False,
        restore_seconds=12.5,
        checks=[{"name": "contents", "ok": True, "detail": "3 files match the manifest"}],
    )
    client.force_login(viewer)
    text = client.get(reverse("run-detail", args=[restore.pk])).text
    assert "/srv/restored" in text and "a new location" in text
    assert "<code>docs</code>" in text
    assert "What the restore verified" in text and "3 files match the manifest" in text
    assert "13s" in text  # 12.5 s, to the nearest second


def test_operators_get_files_changes_and_restore_links_on_a_good_backup(client, operator, web):
    run = make_run(web, ago_s=600)
    make_manifest(run, {"a.txt": "a"})
    client.force_login(operator)
    text = client.get(reverse("run-detail", args=[run.pk])).text
    assert reverse("manifest-browse", args=[run.pk]) in text
    assert f"{reverse('restore-start')}?backup={run.pk}" in text
    assert "1 entry — <a" in text


def test_an_unknown_run_is_404(client, viewer):
    client.force_login(viewer)
    assert client.get(reverse("run-detail", args=[999])).status_code == 404


@pytest.mark.parametrize("count", [2, 20])
def test_query_count_does_not_grow_with_the_runs_that_used_a_backup(
    client, viewer, web, count, django_assert_num_queries
):
    backup = make_run(web, ago_s=3600)
    for index in range(count):
        make_run(web, kind="verify", ago_s=3000 - index, backup=backup, exclusive=False)
    client.force_login(viewer)
    # 2 (session, user) + 1 (the run with its source, policy, backup and requester)
    # + 1 (its catalogued manifest) + 1 (the newest runs that read it, bounded to 10)
    # + 2 (the viewer's permissions: view_run for the page, then the restore button)
    # + 1 (its copies in other storages, with their storages).
    with django_assert_num_queries(8):
        client.get(reverse("run-detail", args=[backup.pk]))
    # The live part alone: session, user, 2 (permissions: it needs view_run), the run.
    with django_assert_num_queries(5):
        client.get(reverse("run-live", args=[backup.pk]))
