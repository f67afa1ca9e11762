"""A policy's SQLite check queries only read, and stop at their time limit, whoever set them."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from backups.models import Policy, Run
from backups.services.catalog import policy_create, source_create
from tests.engine.restore_helpers import make_database

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def database(tmp_path):
    return make_database(tmp_path / "app.db", rows=12)


@pytest.fixture
def backup(database):
    policy = policy_create(name="db", verify_after_backup=False)
    source = source_create(name="app", kind="sqlite", location=str(database), policy=policy)
    with pytest.raises(SystemExit):
        call_command("backup", source.name, "--inline", stdout=StringIO(), stderr=StringIO())
    return Run.objects.get(kind="backup", status="succeeded")


def set_checks_in_the_admin(client, admin_user, queries) -> None:
    policy = Policy.objects.get(name="db")
    form = {
        "name": policy.name,
        "schedule": "",
        "rpo_s": "",
        "rto_s": "",
        "keep_last": "0",
        "keep_hourly": "0",
        "keep_daily": "0",
        "keep_weekly": "0",
        "keep_monthly": "0",
        "keep_yearly": "0",
        "compression": "zstd",
        "compression_level": "",
        "drill_every_s": "",
        "run_timeout_s": "1h",
        "check_queries": json.dumps(queries),
    }
    client.force_login(admin_user)
    response = client.post(reverse("admin:backups_policy_change", args=[policy.pk]), form)
    assert response.status_code == 302, response.content[:500]


def verify(backup) -> dict:
    out = StringIO()
    with pytest.raises(SystemExit) as ended:
        call_command("verify", str(backup.pk), "--inline", "--json", stdout=out, stderr=StringIO())
    assert ended.value.code == 1
    return json.loads(out.getvalue())


def test_a_check_query_that_writes_a_file_is_refused_and_writes_nothing(
    client, admin_user, backup, database, tmp_path
):
    planted = tmp_path / "stolen.db"
    before = database.read_bytes()
    queries = [
        {"sql": f"VACUUM INTO '{planted}'", "expect": "= 0"},
        {"sql": "DELETE FROM projects", "expect": "= 0"},
        {"sql": "SELECT COUNT(*) FROM projects", "expect": "= 12"},
    ]
    set_checks_in_the_admin(client, admin_user, queries)
    run = verify(backup)
    database_check = next(check for check in run["checks"] if check["name"] == "database")
    vacuum = queries[0]["sql"]
    assert f"{vacuum!r} refused: a check query may only read" in database_check["detail"]
    assert "'DELETE FROM projects' refused" in database_check["detail"]
    assert "SELECT COUNT(*) FROM projects returned 12" in database_check["detail"]
    assert not planted.exists()
    assert database.read_bytes() == before


def test_a_check_query_that_never_ends_is_stopped(client, admin_user, backup, settings):
    settings.CHECK_QUERY_TIMEOUT_S = 0.3
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"
    set_checks_in_the_admin(client, admin_user, [{"sql": endless, "expect": "> 0"}])
    run = verify(backup)
    assert "stopped after 0.3 s, its time limit" in run["error"]
