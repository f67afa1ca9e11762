"""Every page needs a login, but /healthz and /metrics; the overview lists sources."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_overview_redirects_anonymous_users_to_login(client):
    response = client.get(reverse("overview"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_a_signed_out_refresh_sends_the_whole_page_to_login(client, source):
    # The overview's table polls itself; after the session expired, htmx must load the
    # login page as a page (HX-Redirect), never swap the login form into the table.
    response = client.get(
        reverse("overview") + "?sort=age",
        headers={"HX-Request": "true", "HX-Current-URL": "http://testserver/?status=failed"},
    )
    assert response.status_code == 200
    assert response.content == b""
    assert response["HX-Redirect"] == f"{reverse('login')}?next=/%3Fstatus%3Dfailed"


def test_a_signed_out_live_run_refresh_goes_back_to_the_run_page(client, source):
    page = "http://testserver/runs/7/"
    response = client.get(
        reverse("run-live", args=[7]), headers={"HX-Request": "true", "HX-Current-URL": page}
    )
    assert response["HX-Redirect"] == f"{reverse('login')}?next=/runs/7/"


def test_overview_lists_sources_for_a_viewer(client, viewer, source):
    client.force_login(viewer)
    response = client.get(reverse("overview"))
    assert response.status_code == 200
    assert source.name in response.text and source.location in response.text


def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_healthz_is_503_when_the_database_does_not_answer():
    # A real unreachable database: nothing listens on port 1.
    code = (
        "from django.test import Client; r = Client(HTTP_HOST='localhost').get('/healthz'); "
        "print(r.status_code, r.json()['status'])"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        env=dict(os.environ, DATABASE_URL="postgresql://postgres@127.0.0.1:1/none"),
        capture_output=True,
        text=True,
    )
    assert result.stdout.split()[-2:] == ["503", "error"], result.stderr


def test_metrics_need_the_bearer_token_when_one_is_set(client, settings, source):
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
    assert response.status_code == 200
    assert 'backup_sources{kind="directory"} 1.0' in response.text


def test_metrics_are_open_without_a_token(client, settings):
    settings.METRICS_TOKEN = None
    assert client.get("/metrics").status_code == 200


def test_metrics_without_a_token_are_closed_unless_opened(client, settings):
    settings.METRICS_TOKEN = None
    settings.METRICS_PUBLIC = False
    response = client.get("/metrics")
    assert response.status_code == 403
    assert "set METRICS_TOKEN" in response.text and "METRICS_PUBLIC=1" in response.text
    settings.METRICS_PUBLIC = True
    assert client.get("/metrics").status_code == 200


def test_healthz_tells_workers_are_down_until_housekeeping_runs(client):
    from backups.services.schedules import housekeeping_run

    body = client.get("/healthz").json()
    assert body["workers"] == "down" and body["workers_seen_at"] is None
    assert body["status"] == "ok"
    housekeeping_run()
    body = client.get("/healthz").json()
    assert body["workers"] == "ok" and body["workers_seen_at"]


def test_healthz_tells_workers_are_down_when_housekeeping_stopped(client):
    from datetime import timedelta

    from django.utils import timezone

    from backups.models import WorkerBeat

    WorkerBeat.beat("housekeeping", at=timezone.now() - timedelta(minutes=10))
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["workers"] == "down"


def test_healthz_tells_whether_the_archive_storage_takes_a_file(client, settings, tmp_path):
    assert client.get("/healthz").json()["storage"] == "ok"
    assert list(settings.ARCHIVE_ROOT.iterdir()) == []  # the probe left nothing behind
    settings.ARCHIVE_ROOT = tmp_path / "unmounted"
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["storage"] == "error" and body["storage_detail"] == "No such file or directory"
    assert "unmounted" not in response.text
