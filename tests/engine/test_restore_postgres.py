"""Restoring a PostgreSQL backup with pg_restore, against a real local server."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess

import pytest

from backups.engine.errors import ArchiveError, Cancelled, EngineError, TargetError
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import Entry
from backups.engine.restore import RestoreRequest, check_target, restore_archive
from tests.engine.fake_postgres import FakePostgres
from tests.engine.restore_helpers import CancelWhilePublishing, compress, write_archive

SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/")


def _server_answers() -> bool:
    if not shutil.which("pg_restore") or not shutil.which("createdb"):
        return False
    probe = subprocess.run(
        ["psql", SERVER + "postgres", "-Atc", "SELECT 1"], capture_output=True, text=True
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
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
def new_name():
    """A database name nobody uses; whatever a test makes under it is dropped after."""
    name = f"restore_test_{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        drop(name)


def exists(name):
    found = psql(SERVER + "postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{name}'")
    return found == "1"


@pytest.fixture
def database(new_name):
    subprocess.run(["createdb", "--maintenance-db", SERVER + "postgres", new_name], check=True)
    uri = SERVER + new_name
    psql(uri, "CREATE TABLE projects (id serial PRIMARY KEY, name text)")
    psql(uri, "INSERT INTO projects (name) SELECT 'p' || n FROM generate_series(1, 1000) n")
    return uri


@pytest.fixture
def another_app():
    """Another application's live database on the same server."""
    name = f"restore_test_{secrets.token_hex(4)}"
    subprocess.run(["createdb", "--maintenance-db", SERVER + "postgres", name], check=True)
    psql(SERVER + name, "CREATE TABLE accounts (id int PRIMARY KEY, owner text)")
    psql(SERVER + name, "INSERT INTO accounts VALUES (1, 'alice'), (2, 'bob')")
    try:
        yield SERVER + name
    finally:
        drop(name)


def dump_archive(uri, folder):
    dump = subprocess.run(
        ["pg_dump", "--format=custom", "-Z0", uri], check=True, capture_output=True
    ).stdout
    entry = Entry(
        path="dump.pgdump",
        type="file",
        size=len(dump),
        sha256=hashlib.sha256(dump).hexdigest(),
    )
    return write_archive(
        folder,
        dump,
        payload=compress(dump, "zstd"),
        suffix=".pgdump.zst",
        entries=[entry],
        kind="postgres",
        location=uri,
    )


def request_for(backup, uri, **options):
    return RestoreRequest(
        archive=backup.archive, manifest=backup.manifest, kind="postgres", target=uri, **options
    )


def test_restore_in_place_replaces_the_database_contents(database, tmp_path):
    backup = dump_archive(database, tmp_path / "archives")
    psql(database, "DELETE FROM projects WHERE id > 10; UPDATE projects SET name = 'changed'")

    result = restore_archive(request_for(backup, database, in_place=True), RecordingHooks())

    assert psql(database, "SELECT COUNT(*) FROM projects") == "1000"
    assert psql(database, "SELECT name FROM projects WHERE id = 1") == "p1"
    assert result.checks[0]["name"] == "checksum" and result.checks[0]["ok"]


def test_restore_of_a_damaged_dump_leaves_the_database_alone(database, tmp_path):
    backup = dump_archive(database, tmp_path / "archives")
    data = bytearray(backup.archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    backup.archive.write_bytes(bytes(data))
    psql(database, "DELETE FROM projects WHERE id > 10")

    with pytest.raises(ArchiveError, match="damaged"):
        restore_archive(request_for(backup, database, in_place=True), RecordingHooks())

    assert psql(database, "SELECT COUNT(*) FROM projects") == "10"


def test_restore_refuses_a_uri_with_a_password(database, tmp_path):
    backup = dump_archive(database, tmp_path / "archives")

    with pytest.raises(TargetError, match="password"):
        check_target(request_for(backup, "postgresql://u:secret@127.0.0.1/db"))


def test_a_cancel_during_pg_restore_stops_it_and_leaves_the_database_as_it_was(database, tmp_path):
    # Big enough that pg_restore runs across several checks (one every 0.2 s).
    psql(database, "INSERT INTO projects (name) SELECT 'q' || n FROM generate_series(1, 400000) n")
    backup = dump_archive(database, tmp_path / "archives")
    psql(database, "DELETE FROM projects WHERE id > 10")
    hooks = CancelWhilePublishing()

    with pytest.raises(Cancelled, match="^Cancelled by a user. It was stopped there: the target"):
        restore_archive(request_for(backup, database, in_place=True), hooks)

    assert psql(database, "SELECT COUNT(*) FROM projects") == "10"


def test_restore_of_a_dump_the_catalog_does_not_know_leaves_the_database_alone(database, tmp_path):
    backup = dump_archive(database, tmp_path / "archives")
    psql(database, "DELETE FROM projects WHERE id > 10")
    request = request_for(backup, database, in_place=True)
    request.catalog_sha256 = "e" * 64

    with pytest.raises(ArchiveError, match="the files on disk are not the ones this backup"):
        restore_archive(request, RecordingHooks())

    assert psql(database, "SELECT COUNT(*) FROM projects") == "10"


def test_a_new_location_that_holds_another_apps_tables_is_refused_and_untouched(
    database, another_app, tmp_path
):
    backup = dump_archive(database, tmp_path / "archives")

    with pytest.raises(TargetError, match="exists and is not empty"):
        restore_archive(request_for(backup, another_app), RecordingHooks())

    assert psql(another_app, "SELECT string_agg(owner, ',' ORDER BY id) FROM accounts") == (
        "alice,bob"
    )
    assert psql(another_app, "SELECT to_regclass('projects') IS NULL") == "t"


def test_a_new_location_database_is_created_and_filled(database, tmp_path):
    backup = dump_archive(database, tmp_path / "archives")
    name = f"restore_test_{secrets.token_hex(4)}"
    try:
        result = restore_archive(request_for(backup, SERVER + name), RecordingHooks())

        assert exists(name)
        assert psql(SERVER + name, "SELECT COUNT(*) FROM projects") == "1000"
        assert result.target == SERVER + name
    finally:
        drop(name)


def test_an_existing_empty_database_is_filled(database, another_app, tmp_path):
    backup = dump_archive(database, tmp_path / "archives")
    psql(another_app, "DROP TABLE accounts")

    restore_archive(request_for(backup, another_app), RecordingHooks())

    assert psql(another_app, "SELECT COUNT(*) FROM projects") == "1000"


def test_a_failed_load_drops_the_database_it_created(database, tmp_path):
    # The dump grants to a role that is gone by restore time: pg_restore fails there.
    role = f"restore_test_{secrets.token_hex(4)}"
    psql(database, f"CREATE ROLE {role}; GRANT SELECT ON projects TO {role}")
    backup = dump_archive(database, tmp_path / "archives")
    psql(database, f"REVOKE ALL ON projects FROM {role}; DROP ROLE {role}")
    name = f"restore_test_{secrets.token_hex(4)}"
    try:
        with pytest.raises(EngineError, match="pg_restore failed"):
            restore_archive(request_for(backup, SERVER + name), RecordingHooks())
        assert not exists(name)
    finally:
        drop(name)


def test_the_source_database_is_not_a_new_location(database, tmp_path):
    backup = dump_archive(database, tmp_path / "archives")

    with pytest.raises(TargetError, match="the source's own database"):
        check_target(request_for(backup, database))


@pytest.mark.parametrize(
    "query",
    ["host=10.0.0.9", "hostaddr=10.0.0.9", "service=prod", "passfile=/tmp/pgpass"],
)
def test_a_target_cannot_steer_the_connection_through_its_parameters(database, tmp_path, query):
    backup = dump_archive(database, tmp_path / "archives")

    with pytest.raises(TargetError):
        check_target(request_for(backup, f"{SERVER}elsewhere?{query}"))


def test_a_server_not_allowed_is_refused_before_any_connection(database, tmp_path, monkeypatch):
    backup = dump_archive(database, tmp_path / "archives")
    monkeypatch.setenv("PGPASSWORD", "worker-secret")

    with FakePostgres() as server:
        target = f"postgresql://postgres@127.0.0.1:{server.port}/elsewhere"
        with pytest.raises(TargetError, match="not one a restore may write to"):
            restore_archive(request_for(backup, target), RecordingHooks())

    assert server.received == []


def test_an_allowed_other_server_never_receives_the_workers_password(
    database, tmp_path, monkeypatch
):
    backup = dump_archive(database, tmp_path / "archives")
    monkeypatch.setenv("PGPASSWORD", "worker-secret")

    with FakePostgres() as server:
        target = f"postgresql://postgres@127.0.0.1:{server.port}/elsewhere"
        allowed = [f"127.0.0.1:{server.port}"]
        with pytest.raises(EngineError, match="no password"):
            restore_archive(request_for(backup, target, postgres_servers=allowed), RecordingHooks())

    assert server.received, "the allowed server was never asked"
    assert b"user\0postgres" in server.received[0]
    assert b"worker-secret" not in server.everything
