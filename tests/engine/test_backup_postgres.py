"""Backing up a PostgreSQL database: pg_dump's custom format, compressed by us."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from backups.engine.backup import BackupRequest, plan_backup, run_backup
from backups.engine.errors import SourceError
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import load_manifest

SERVER = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
BASE_URI = "postgresql://postgres@127.0.0.1:5432"
STEM = "20260101T000000Z-11"


def server_available() -> bool:
    if not shutil.which("pg_dump") or not shutil.which("psql"):
        return False
    probe = subprocess.run(
        ["psql", *SERVER, "-d", "postgres", "-Atc", "SELECT 1", "-w"], capture_output=True
    )
    return probe.returncode == 0


@pytest.fixture(scope="module")
def database():
    """A throw-away database with a few tables, dropped afterwards."""
    if not server_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432 (required in CI)")
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    name = f"bk_engine_test_{secrets.token_hex(4)}"
    subprocess.run(["createdb", *SERVER, "-w", name], check=True)
    try:
        subprocess.run(
            [
                "psql",
                *SERVER,
                "-w",
                "-d",
                name,
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                "CREATE TABLE items(id serial PRIMARY KEY, name text, price numeric);"
                "INSERT INTO items(name, price) SELECT 'item ' || g, g * 1.5 "
                "FROM generate_series(1, 20000) g;"
                "CREATE TABLE notes(body text); INSERT INTO notes VALUES ('caf\u00e9'), ('x');",
            ],
            check=True,
        )
        yield name
    finally:
        subprocess.run(["dropdb", *SERVER, "-w", "--if-exists", name], check=False)


def backup(uri: str, dest: Path):
    request = BackupRequest(kind="postgres", location=uri, dest_dir=dest, stem=STEM)
    return run_backup(request, RecordingHooks())


def test_the_dump_is_a_custom_format_archive_pg_restore_reads(database, tmp_path):
    dest = tmp_path / "dest"
    result = backup(f"{BASE_URI}/{database}", dest)

    assert result.archive.name == f"{STEM}.pgdump.zst"
    assert result.sidecar.name == f"{STEM}.pgdump.zst.sha256"
    assert subprocess.run("sha256sum -c *.sha256", shell=True, cwd=dest).returncode == 0
    with open(result.archive, "rb") as raw:
        dump = zstandard.ZstdDecompressor().stream_reader(raw).read()
    assert dump.startswith(b"PGDMP")
    (entry,) = load_manifest(result.manifest).entries
    assert (entry.path, entry.type, entry.size) == (f"{database}.pgdump", "file", len(dump))
    assert entry.sha256 == hashlib.sha256(dump).hexdigest()
    assert (result.files, result.bytes) == (1, len(dump))

    dump_file = tmp_path / "db.pgdump"
    subprocess.run(f"zstd -d < '{result.archive}' > '{dump_file}'", shell=True, check=True)
    listing = subprocess.run(
        ["pg_restore", "--list", str(dump_file)], capture_output=True, check=True, text=True
    ).stdout
    assert "TABLE public items" in listing and "TABLE DATA public notes" in listing


def test_the_dump_restores_into_a_new_database(database, tmp_path):
    result = backup(f"{BASE_URI}/{database}", tmp_path / "dest")
    copy = f"{database}_copy"
    subprocess.run(["createdb", *SERVER, "-w", copy], check=True)
    try:
        subprocess.run(
            f"zstd -d < '{result.archive}' | pg_restore -h 127.0.0.1 -U postgres -w -d {copy}",
            shell=True,
            check=True,
        )
        count = subprocess.run(
            ["psql", *SERVER, "-w", "-d", copy, "-Atc", "SELECT count(*), sum(price) FROM items"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout.strip()
        assert count == "20000|300015000.0"
    finally:
        subprocess.run(["dropdb", *SERVER, "-w", "--if-exists", copy], check=False)


def test_a_missing_database_fails_with_pg_dumps_message(database, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(
        SourceError, match=r'pg_dump failed.*database "no_such_db_x" does not exist'
    ):
        backup(f"{BASE_URI}/no_such_db_x", dest)
    assert list(dest.iterdir()) == []


def test_a_password_in_the_location_is_refused(tmp_path):
    with pytest.raises(SourceError, match="contains a password"):
        backup("postgresql://postgres:secret@127.0.0.1/x", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_the_plan_reports_the_database_size(database):
    plan = plan_backup(kind="postgres", location=f"{BASE_URI}/{database}", excludes=())
    assert plan.files == 1 and plan.bytes > 1_000_000
