"""The guarded restore: choose, review what is overwritten, type the name, then it runs."""

import pytest
from django.urls import reverse

from backups.models import AuditEvent, Run
from tests.pages_helpers import make_policy, make_run, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture
def web(tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    return make_source("web", policy=make_policy(), location=str(live))


@pytest.fixture
def backup(web, settings):
    """A good backup whose archive and manifest exist on disk (the target checks read them)."""
    run = make_run(web, ago_s=600)
    folder = settings.ARCHIVE_ROOT / "web"
    folder.mkdir()
    archive = folder / f"20260101T000000Z-{run.pk}.tar.zst"
    archive.write_bytes(b"x")
    run.archive = str(archive)
    run.save(update_fields=["archive"])
    return run


def review(client, backup, **fields):
    data = {"source": "web", "backup": backup.pk, "mode": "new", "target": "", "paths": ""}
    data.update(fields)
    return client.post(reverse("restore-confirm"), data)


def test_the_start_page_offers_the_backup_a_new_location_and_paths(
    client, operator, backup, web, settings, tmp_path
):
    settings.RESTORE_ROOTS = [tmp_path / "restores"]
    client.force_login(operator)
    response = client.get(reverse("restore-start"), {"backup": backup.pk, "path": ["a", "b/c"]})
    assert response.status_code == 200
    form = response.context["form"]
    assert form.initial["backup"] == backup.pk
    assert form.initial["mode"] == "new"
    assert form.initial["target"] == str(tmp_path / "restores" / f"web-restored-{backup.pk}")
    assert form.initial["paths"] == "a\nb/c"
    assert '<label for="id_target">New location</label>' in response.text


def test_a_new_location_is_reviewed_as_overwriting_nothing(client, operator, backup, tmp_path):
    client.force_login(operator)
    response = review(client, backup, target=str(tmp_path / "restored"))
    assert response.status_code == 200
    assert response.templates[0].name == "dashboard/restore_confirm.html"
    assert "Nothing existing is overwritten" in response.text
    assert 'name="confirm_name"' in response.text
    assert not Run.objects.filter(kind="restore").exists()


def test_in_place_is_reviewed_as_replacing_the_live_data(client, operator, backup, web):
    client.force_login(operator)
    response = review(client, backup, mode="in_place")
    assert "This overwrites live data" in response.text
    assert f"The whole of {web.location} is replaced by the contents of backup" in response.text


def test_in_place_with_paths_names_each_path_that_is_replaced(
    client, operator, backup, monkeypatch
):
    # The selection is checked against the manifest; here only the wording is under test.
    monkeypatch.setattr("dashboard.forms.restore_target_problem", lambda **request: None)
    client.force_login(operator)
    response = review(client, backup, mode="in_place", paths="docs\nimg/logo.png\n")
    assert "Each of the 2 path(s) below" in response.text
    assert "<li><code>docs</code></li>" in response.text
    assert "Everything else in the folder stays as it is." in response.text


def test_a_bad_target_is_refused_before_the_confirmation(client, operator, backup, web):
    client.force_login(operator)
    response = review(client, backup, target="relative/path")
    assert response.templates[0].name == "dashboard/restore_start.html"
    assert "relative path" in response.text
    response = review(client, backup, target=web.location)
    assert "That is the source" in response.text


def test_the_wrong_name_restores_nothing(client, operator, backup, tmp_path):
    client.force_login(operator)
    response = review(client, backup, target=str(tmp_path / "restored"), confirm_name="WEB")
    assert response.status_code == 200
    assert "type web exactly" in response.text
    assert not Run.objects.filter(kind="restore").exists()


def test_the_typed_name_requests_the_restore_and_lands_on_its_run(
    client, operator, backup, tmp_path, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    target = tmp_path / "restored"
    with django_capture_on_commit_callbacks() as callbacks:
        response = review(client, backup, target=str(target), confirm_name="web")
    restore = Run.objects.get(kind="restore")
    assert response.status_code == 302
    assert response["Location"] == reverse("run-detail", args=[restore.pk])
    assert (restore.backup, restore.target, restore.in_place, restore.requested_by) == (
        backup,
        str(target),
        False,
        operator,
    )
    assert len(callbacks) == 1
    event = AuditEvent.objects.get(action="restore.request")
    assert event.actor == operator and event.outcome == "requested"


def test_an_in_place_restore_while_a_backup_runs_is_refused_as_busy(client, operator, backup, web):
    active = make_run(web, status="running", ago_s=5)
    client.force_login(operator)
    response = review(client, backup, mode="in_place", confirm_name="web")
    assert response["Location"] == reverse("run-detail", args=[active.pk])
    assert not Run.objects.filter(kind="restore").exists()


@pytest.mark.parametrize("url", ["restore-start", "restore-confirm"])
def test_a_viewer_gets_403_and_the_refusal_is_audited(client, viewer, backup, url):
    client.force_login(viewer)
    response = client.post(
        reverse(url), {"source": "web", "backup": backup.pk, "confirm_name": "web"}
    )
    assert response.status_code == 403
    event = AuditEvent.objects.get(action="permission.denied")
    assert (event.actor, event.outcome) == (viewer, "denied")
    assert event.detail["permission"] == "backups.run_restore"
    assert not Run.objects.filter(kind="restore").exists()


def test_viewers_see_the_data_but_no_restore_button(client, viewer, backup):
    client.force_login(viewer)
    for url in (
        reverse("source-detail", args=["web"]),
        reverse("run-detail", args=[backup.pk]),
    ):
        text = client.get(url).text
        assert reverse("restore-start") not in text


def test_the_confirmation_is_post_only(client, operator):
    client.force_login(operator)
    assert client.get(reverse("restore-confirm")).status_code == 405


@pytest.mark.parametrize("count", [2, 20])
def test_query_counts_do_not_grow_with_the_restore_points(
    client, operator, web, count, tmp_path, django_assert_num_queries
):
    runs = [make_run(web, ago_s=(i + 1) * 3600) for i in range(count)]
    client.force_login(operator)
    # 2 (session, user) + 2 (the operator's permissions) + 1 (the backup asked for, with
    # its source) + 1 (the newest 50 restore points).
    with django_assert_num_queries(6):
        client.get(reverse("restore-start"), {"backup": runs[0].pk})
    # Review: 2 + 2 + 1 (the source) + 1 (the backup asked for) + 1 (restore points)
    # + 1 (the sources' locations a new location stays out of) + 1 (its manifest's totals)
    # + 1 (the local storages' folders it stays out of) + 1 (the backup's proven copies,
    # where it is read when its own archive is missing).
    with django_assert_num_queries(11):
        response = client.post(
            reverse("restore-confirm"),
            {"source": "web", "backup": runs[0].pk, "mode": "new", "target": str(tmp_path / "t")},
        )
    assert response.status_code == 200
