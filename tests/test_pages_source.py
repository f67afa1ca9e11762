"""A source's page: standing, charts, runs, restore points, retention, and its actions."""

import pytest
from django.urls import reverse

from backups.models import AuditEvent, Run
from tests.pages_helpers import make_policy, make_run, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture
def web():
    return make_source("web", policy=make_policy(), owner="web-team")


def test_the_page_answers_with_the_standing_first(client, viewer, web):
    make_run(web, ago_s=600, verified=True)
    client.force_login(viewer)
    response = client.get(reverse("source-detail", args=["web"]))
    assert response.status_code == 200
    text = response.text
    # The cards come before the history, the runs and retention.
    assert text.index("Standing") < text.index("Restore points") < text.index("History")
    assert response.context["standing"].rpo_status == "ok"
    assert "Newest good backup is <strong>10m</strong> old; target 2h." in text


def test_a_backup_stamped_in_the_future_is_not_shown_as_fresh(client, viewer, web):
    # Made by a host whose clock runs two hours ahead.
    run = make_run(web, ago_s=-7200)
    client.force_login(viewer)
    response = client.get(reverse("source-detail", args=["web"]))
    assert response.context["standing"].rpo_status == "unknown"
    assert f"The newest good backup (#{run.pk}) is stamped 2h in the future" in response.text
    assert "Newest good backup is" not in response.text


def test_charts_are_inline_svg_described_in_words(client, viewer, web):
    make_run(web, ago_s=7200, took_s=30)
    make_run(web, ago_s=3600, status="failed", took_s=5, error="Disk full.")
    make_run(web, ago_s=600, took_s=60)
    client.force_login(viewer)
    text = client.get(reverse("source-detail", args=["web"])).text
    assert text.count('<svg class="chart"') == 4
    assert '<title id="chart-duration-title">' in text
    assert "1 failed, drawn as crosses." in text
    # The RPO target is a labelled, dashed line, not a colour.
    assert 'class="target-label"' in text and "target 2h" in text


def test_runs_are_paginated_and_filterable(client, viewer, web):
    for hours in range(30):
        make_run(web, ago_s=(hours + 1) * 3600)
    make_run(web, kind="verify", ago_s=100, exclusive=False)
    client.force_login(viewer)
    first = client.get(reverse("source-detail", args=["web"]))
    assert len(first.context["pager"].items) == 25 and first.context["pager"].has_next
    second = client.get(reverse("source-detail", args=["web"]), {"page": 2})
    assert len(second.context["pager"].items) == 6 and not second.context["pager"].has_next
    verifies = client.get(reverse("source-detail", args=["web"]), {"kind": "verify"})
    assert [run.kind for run in verifies.context["pager"].items] == ["verify"]


def test_restore_points_link_to_files_changes_and_restore_for_operators(client, operator, web):
    backup = make_run(web, ago_s=600)
    client.force_login(operator)
    text = client.get(reverse("source-detail", args=["web"])).text
    assert reverse("manifest-browse", args=[backup.pk]) in text
    assert f"{reverse('restore-start')}?backup={backup.pk}" in text


def test_viewers_see_no_action_buttons(client, viewer, web):
    make_run(web, ago_s=600)
    client.force_login(viewer)
    response = client.get(reverse("source-detail", args=["web"]))
    assert response.status_code == 200 and "Restore points" in response.text
    assert "Back up now" not in response.text and "Restore…" not in response.text


def test_retention_preview_says_what_is_kept_and_why(client, viewer, web, settings, tmp_path):
    folder = settings.ARCHIVE_ROOT / "web"
    folder.mkdir()
    runs = [make_run(web, ago_s=(hours + 1) * 3600) for hours in range(5)]
    for run in runs:
        run.archive = str(folder / f"{run.pk}.tar.zst")
        run.save(update_fields=["archive"])
        (folder / f"{run.pk}.tar.zst").write_bytes(b"x")
    client.force_login(viewer)
    response = client.get(reverse("source-detail", args=["web"]))
    plan = response.context["plan"]
    # keep_last=3: the three newest stay, the two oldest go.
    assert [run.pk for run, _ in plan.keep] == [run.pk for run in runs[:3]]
    assert [run.pk for run in plan.remove] == [run.pk for run in runs[3:]]
    assert "The next prune keeps <strong>3</strong> backups and removes <strong>2</strong>." in (
        response.text
    )


def test_a_source_without_policy_says_retention_removes_nothing(client, viewer):
    make_source("bare")
    client.force_login(viewer)
    response = client.get(reverse("source-detail", args=["bare"]))
    assert response.status_code == 200
    assert "nothing is removed" in response.context["plan_refused"]


def test_back_up_now_queues_a_run_and_shows_it(
    client, operator, web, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("source-backup", args=["web"]), follow=True)
    run = Run.objects.get(source=web)
    assert response.redirect_chain[-1][0] == reverse("run-detail", args=[run.pk])
    assert (run.kind, run.status, run.trigger, run.requested_by) == (
        "backup",
        "queued",
        "manual",
        operator,
    )
    assert len(callbacks) == 1  # handed to the workers once committed
    assert f"Backup #{run.pk} of web is queued." in response.text


def test_back_up_now_on_a_busy_source_leads_to_the_active_run(client, operator, web):
    active = make_run(web, status="running", ago_s=30)
    client.force_login(operator)
    response = client.post(reverse("source-backup", args=["web"]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("run-detail", args=[active.pk])
    assert "is busy" in response.text
    assert Run.objects.filter(source=web).count() == 1


def test_verify_and_drill_the_newest_good_backup(client, operator, web):
    make_run(web, ago_s=7200)
    newest = make_run(web, ago_s=600)
    client.force_login(operator)
    client.post(reverse("source-verify", args=["web"]))
    client.post(reverse("source-drill", args=["web"]))
    checks = Run.objects.filter(kind="verify").order_by("pk")
    assert [(run.backup_id, run.drill) for run in checks] == [(newest.pk, False), (newest.pk, True)]


def test_verify_without_a_good_backup_says_so(client, operator, web):
    client.force_login(operator)
    response = client.post(reverse("source-verify", args=["web"]), follow=True)
    assert "No good backup of web yet: nothing to verify." in response.text
    assert not Run.objects.exists()


def test_a_viewer_may_not_back_up_and_the_refusal_is_audited(client, viewer, web):
    client.force_login(viewer)
    assert client.post(reverse("source-backup", args=["web"])).status_code == 403
    event = AuditEvent.objects.get(action="permission.denied")
    assert event.actor == viewer and event.detail["permission"] == "backups.add_run"
    assert not Run.objects.exists()


def test_actions_are_post_only(client, operator, web):
    client.force_login(operator)
    assert client.get(reverse("source-backup", args=["web"])).status_code == 405


@pytest.mark.parametrize("count", [2, 20])
def test_query_count_does_not_grow_with_the_history(
    client, viewer, web, count, django_assert_num_queries
):
    for hours in range(count):
        backup = make_run(web, ago_s=(hours + 1) * 3600, verified=hours == 0)
        make_run(web, kind="verify", ago_s=(hours + 1) * 3600 - 60, backup=backup, exclusive=False)
    client.force_login(viewer)
    # 2 (session, user) + 1 (the source) + 5 (compliance standing: the stored standing with its
    # two runs, the runs in progress, the 30-day counts, the RPO gaps, the schedules) + 1 (the
    # runs page) + 1 (restore points) + 3 (retention: the backups, those in use, their copies in
    # storages with keep rules of their own) + 3 (charts: recent backups, the 30-day backups, the
    # newest before the window) + 2 (the viewer's own and group permissions, read once to decide
    # which action buttons to show) + 1 (the slots skipped recently) + 2 (the source's alerts, one
    # per condition at most, and the silences in force) + 1 (the restore points' proven copies,
    # with their storages).
    with django_assert_num_queries(22):
        response = client.get(reverse("source-detail", args=["web"]))
    assert len(response.context["pager"].items) == min(25, 2 * count)
