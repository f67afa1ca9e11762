"""Where a database or pod restore may go, tried as an operator through the pages and the CLI.

PostgreSQL runs for real (throwaway databases with random names, dropped after); a fake
server on a free port stands for a host the attacker controls.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from backups.models import Run
from backups.services.catalog import source_create
from backups.tasks import execute_run
from tests.engine.fake_postgres import FakePostgres
from tests.pages_helpers import make_run, make_source

pytestmark = pytest.mark.django_db(transaction=True)

SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/")


def _server_answers() -> bool:
    probe = subprocess.run(
        ["psql", SERVER + "postgres", "-Atc", "SELECT 1"], capture_output=True, text=True
    )
    return probe.returncode == 0


needs_postgres = pytest.mark.skipif(
    not os.environ.get("CI") and not _server_answers(),
    reason=f"no PostgreSQL server answers at {SERVER} (CI never skips)",
)


def psql(uri, sql):
    return subprocess.run(
        ["psql", uri, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def drop(name):
    subprocess.run(
        ["dropdb", "--maintenance-db", SERVER + "postgres", "--force", "--if-exists", name],
        check=False,
        capture_output=True,
    )


@pytest.fixture
def names():
    """Make throwaway database names; every database made under one is dropped after."""
    made = []

    def new():
        made.append(f"restore_test_{secrets.token_hex(4)}")
        return made[-1]

    yield new
    for name in made:
        drop(name)


def database(name, sql):
    subprocess.run(["createdb", "--maintenance-db", SERVER + "postgres", name], check=True)
    psql(SERVER + name, sql)
    return SERVER + name


def cli(*args) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command(*args, stdout=out, stderr=StringIO())
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    except CommandError as error:
        code = error.returncode
        out.write(str(error))
    return code, out.getvalue()


@pytest.fixture
def app_backup(names, policy):
    """A backup of the live database of the application `app`."""
    uri = database(
        names(),
        "CREATE TABLE projects (id int PRIMARY KEY, name text);"
        "INSERT INTO projects SELECT n, 'p' || n FROM generate_series(1, 100) n",
    )
    source = source_create(name="app", kind="postgres", location=uri, policy=policy)
    code, out = cli("backup", source.name, "--inline", "--json")
    assert code == 0, out
    return Run.objects.get(pk=json.loads(out)["id"])


def post(client, backup, target, **extra):
    data = {"source": backup.source.slug, "backup": backup.pk, "mode": "new", "target": target}
    return client.post(reverse("restore-confirm"), {**data, **extra})


@needs_postgres
def test_an_operator_cannot_replace_another_apps_tables(client, operator, app_backup, names):
    # Its table has the name of one in the dump: `pg_restore --clean` would replace it.
    another_app = database(
        names(),
        "CREATE TABLE projects (id int PRIMARY KEY, name text);"
        "INSERT INTO projects VALUES (1, 'theirs'), (2, 'also theirs')",
    )
    client.force_login(operator)
    post(client, app_backup, another_app, confirm_name="app")
    run = Run.objects.get(kind=Run.Kind.RESTORE)

    assert execute_run(run.pk) == Run.Status.FAILED

    run.refresh_from_db()
    assert "exists and is not empty" in run.error
    assert psql(another_app, "SELECT string_agg(name, ',' ORDER BY id) FROM projects") == (
        "theirs,also theirs"
    )


@needs_postgres
def test_a_restore_to_a_new_database_name_creates_and_fills_it(app_backup, names):
    target = SERVER + names()

    code, out = cli("restore", str(app_backup.pk), "--to", target, "--inline", "--json")

    assert code == 0, out
    assert psql(target, "SELECT count(*) FROM projects") == "100"


@needs_postgres
def test_the_page_suggests_a_new_database_and_says_nothing_is_dropped(client, operator, app_backup):
    client.force_login(operator)
    start = client.get(reverse("restore-start"), {"backup": app_backup.pk})
    suggested = start.context["form"].initial["target"]
    assert suggested == f"{app_backup.source.location}_restored_{app_backup.pk}"

    response = post(client, app_backup, suggested)

    assert response.templates[0].name == "dashboard/restore_confirm.html"
    assert "It is created if it does not exist; if it exists it must be empty" in response.text
    assert "No database object is dropped or replaced." in response.text


@needs_postgres
def test_a_server_not_allowed_is_refused_by_the_page_before_any_connection(
    client, operator, app_backup, monkeypatch
):
    monkeypatch.setenv("PGPASSWORD", "worker-secret")
    client.force_login(operator)
    with FakePostgres() as server:
        target = f"postgresql://postgres@127.0.0.1:{server.port}/stolen"
        response = post(client, app_backup, target, confirm_name="app")

    assert response.templates[0].name == "dashboard/restore_start.html"
    assert "is not one a restore may write to" in response.text
    assert not Run.objects.filter(kind=Run.Kind.RESTORE).exists()
    assert server.received == []


@needs_postgres
def test_an_allowed_other_server_never_receives_the_workers_password(
    app_backup, settings, monkeypatch
):
    monkeypatch.setenv("PGPASSWORD", "worker-secret")
    with FakePostgres() as server:
        settings.RESTORE_POSTGRES_HOSTS = [f"127.0.0.1:{server.port}"]
        target = f"postgresql://postgres@127.0.0.1:{server.port}/stolen"
        code, out = cli("restore", str(app_backup.pk), "--to", target, "--inline", "--json")

    assert code == 1, out
    assert "no password" in json.loads(out)["error"]
    assert server.received, "the allowed server was never asked"
    assert b"worker-secret" not in server.everything


@pytest.fixture
def pod_backup(policy, settings):
    source = make_source(
        "api", policy=policy, kind="kubernetes", location="prod/api-0/app:/var/data"
    )
    run = make_run(source, ago_s=600)
    run.archive = str(settings.ARCHIVE_ROOT / "api" / f"20260101T000000Z-{run.pk}.tar.zst")
    run.save(update_fields=["archive"])
    return run


def test_a_pod_in_another_namespace_is_refused(client, operator, pod_backup):
    client.force_login(operator)

    response = post(client, pod_backup, "kube-system/etcd-0:/var/lib/etcd")

    assert response.templates[0].name == "dashboard/restore_start.html"
    assert "The namespace kube-system is not one a restore may write to" in response.text


def test_an_allowed_namespace_is_reviewed_as_overwriting_files_there(
    client, operator, pod_backup, settings
):
    settings.RESTORE_POD_NAMESPACES = ["staging"]
    client.force_login(operator)

    response = post(client, pod_backup, "staging/api-0:/var/data")

    assert response.templates[0].name == "dashboard/restore_confirm.html"
    assert "Files in the pod may be overwritten" in response.text
    assert "Nothing existing is overwritten" not in response.text


def test_a_pod_restored_in_place_is_reviewed_as_overwriting_without_a_copy_aside(
    client, operator, pod_backup
):
    client.force_login(operator)

    response = post(client, pod_backup, "", mode="in_place")

    assert "This overwrites live data" in response.text
    assert "nothing is kept of them. Files created since stay as they are." in response.text
    assert "moved aside" not in response.text


def test_the_restore_form_of_a_pod_does_not_promise_to_touch_nothing(client, operator, pod_backup):
    client.force_login(operator)

    response = client.get(reverse("restore-start"), {"backup": pod_backup.pk})

    assert "A new location (files of the same name there are replaced)" in response.text
    assert "nothing existing is touched" not in response.text
