"""Restoring a PostgreSQL backup with pg_restore, against a real local server."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess

import pytest

from backups.engine.errors import ArchiveError, Cancelled, TargetError
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import Entry
from backups.engine.restore import RestoreRequest, check_target, run_restore
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


@pytest.fixture
def database():
    name = f"restore_test_{secrets.token_hex(4)}"
    subprocess.run(["createdb", "--maintenance-db", SERVER + "postgres", name], check=True)
    uri = SERVER + name
    psql(uri, "CREATE TABLE projects (id serial PRIMARY KEY, name text)")
    psql(uri, "INSERT INTO projects (name) SELECT 'p' || n FROM generate_series(1, 1000) n")
    try:
        yield uri
    finally:
        subprocess.run(
            ["dropdb", "--maintenance-db", SERVER + "postgres", "--force", name], check=False
        )


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


def request_for(backup, uri):
    return RestoreRequest(
        archive=backup.archive, manifest=backup.manifest, kind="postgres", target=uri
    )


def test_restore_replaces_the_database_contents(database, tmp_path):
    backup = dump_archive(database, tmp_path / "archives")
    psql(database, "DELETE FROM projects WHERE id > 10; UPDATE projects SET name = 'changed'")

    result = run_restore(request_for(backup, database), RecordingHooks())

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
        run_restore(request_for(backup, database), RecordingHooks())

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
        run_restore(request_for(backup, database), hooks)

    assert psql(database, "SELECT COUNT(*) FROM projects") == "10"


def test_restore_of_a_dump_the_catalog_does_not_know_leaves_the_database_alone(database, tmp_path):
    backup = dump_archive(database, tmp_path / "archives")
    psql(database, "DELETE FROM projects WHERE id > 10")
    request = request_for(backup, database)
    request.catalog_sha256 = "e" * 64

    with pytest.raises(ArchiveError, match="the files on disk are not the ones this backup"):
        run_restore(request, RecordingHooks())

    assert psql(database, "SELECT COUNT(*) FROM projects") == "10"
