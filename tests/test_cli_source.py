"""`source add` and `source list`: validation per kind, JSON output, nothing half-created."""

import json
import sqlite3

import pytest
from django.core.management import CommandError, call_command

from backups.models import Source

pytestmark = pytest.mark.django_db


def run_json(*args) -> dict:
    from io import StringIO

    out = StringIO()
    call_command(*args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_source_add_directory_with_policy_and_excludes(data_dir, policy):
    call_command(
        "source", "add", "Web Files", "--kind", "directory", "--location", str(data_dir),
        "--policy", "hourly", "--exclude", "*.log", "--exclude", "cache/*",
    )  # fmt: skip
    source = Source.objects.get(name="Web Files")
    assert source.slug == "web-files"
    assert source.policy == policy
    assert source.excludes == ["*.log", "cache/*"]


def test_source_add_accepts_each_valid_location_form(tmp_path):
    database = tmp_path / "app.db"
    sqlite3.connect(database).execute("CREATE TABLE t (x)").connection.close()
    call_command("source", "add", "db", "--kind", "sqlite", "--location", str(database))
    call_command("source", "add", "pod", "--kind", "kubernetes", "--location", "prod/api-0:/data")
    call_command(
        "source", "add", "pod2", "--kind", "kubernetes", "--location", "prod/api-0/app:/var/lib"
    )
    call_command(
        "source", "add", "pg", "--kind", "postgres", "--location", "postgresql://app@db:5432/app"
    )
    # A password file on the workers is the right place for the password.
    call_command(
        "source", "add", "pg2", "--kind", "postgres",
        "--location", "postgresql://app@db/app?sslmode=require&passfile=/etc/backups/pgpass",
    )  # fmt: skip
    names = set(Source.objects.values_list("name", flat=True))
    assert names == {"db", "pod", "pod2", "pg", "pg2"}


@pytest.mark.parametrize(
    "kind, location, fragment",
    [
        ("directory", "relative/path", "relative path"),
        ("directory", "/does/not/exist", "does not exist"),
        ("directory", "/etc/hostname", "not a directory"),
        ("sqlite", "/etc/hostname", "not a SQLite database"),
        ("sqlite", "/no/such.db", "does not exist"),
        ("kubernetes", "prod/api-0:relative", "not a pod location"),
        ("kubernetes", "api-0:/data", "not a pod location"),
        ("kubernetes", "Prod/API:/data", "not a pod location"),
        ("postgres", "mysql://db/app", "not a PostgreSQL URI"),
        ("postgres", "postgresql://app:secret@db/app", "contains a password"),
        # libpq decodes the key: this is `password=secret`.
        ("postgres", "postgresql://app@db/app?pass%77ord=secret", "contains a password"),
        ("postgres", "postgresql://app@db/app?%70assword=secret", "contains a password"),
        ("postgres", "postgresql://app:@db/app", "contains a password"),
        (
            "postgres",
            "postgresql://db/app?dbname=host%3Ddb%20password%3Dsecret",
            "contains a password",
        ),
        ("postgres", "postgresql://app@db/app?%ZZ=1", "cannot be read"),
        ("postgres", "postgresql://app@db", "names no database"),
    ],
)
def test_source_add_refuses_a_bad_location_with_exit_2(kind, location, fragment):
    with pytest.raises(CommandError) as caught:
        call_command("source", "add", "bad", "--kind", kind, "--location", location)
    assert caught.value.returncode == 2
    assert fragment in str(caught.value)
    assert not Source.objects.exists()


def test_source_add_refuses_an_unknown_kind(data_dir):
    with pytest.raises(CommandError) as caught:
        call_command("source", "add", "x", "--kind", "ftp", "--location", str(data_dir))
    assert caught.value.returncode == 2
    assert not Source.objects.exists()


def test_source_add_refuses_an_unknown_policy_and_names_the_known_ones(data_dir, policy):
    with pytest.raises(CommandError) as caught:
        call_command(
            "source", "add", "x", "--kind", "directory", "--location", str(data_dir),
            "--policy", "weekly",
        )  # fmt: skip
    assert caught.value.returncode == 2
    assert "weekly" in str(caught.value) and "hourly" in str(caught.value)
    assert not Source.objects.exists()


def test_source_list_json_lists_every_source(source):
    data = run_json("source", "list")
    assert data == {
        "sources": [
            {
                "name": "files",
                "slug": "files",
                "kind": "directory",
                "location": source.location,
                "policy": "hourly",
                "excludes": [],
                "enabled": True,
                "owner": "",
                "notify": [],
            }
        ]
    }
