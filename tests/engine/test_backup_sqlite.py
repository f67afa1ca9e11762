"""Backing up a SQLite database: a consistent, checked snapshot as one tar member."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from backups.engine.backup import BackupRequest, plan_backup, run_backup
from backups.engine.errors import SourceError
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import load_manifest

STEM = "20260101T000000Z-5"
BATCH = 50

# Another process commits batches of BATCH rows as fast as it can until told to stop: a
# consistent snapshot holds whole batches only.
WRITER = r"""
import select, sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("PRAGMA busy_timeout=30000")
batch = int(sys.argv[2])
n = 0
while True:
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO t(v) VALUES (?)", [("x" * 200,)] * batch)
    db.execute("COMMIT")
    n += 1
    if n == 5:
        print("ready", flush=True)
    if n % 20 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break
"""


def make_db(path: Path, journal: str, rows: int = 20_000) -> Path:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    db.execute("CREATE INDEX tv ON t(v)")
    db.executemany("INSERT INTO t(v) VALUES (?)", [("seed" * 20,)] * rows)
    db.commit()
    db.close()
    return path


def backup(db: Path, dest: Path):
    request = BackupRequest(kind="sqlite", location=str(db), dest_dir=dest, stem=STEM)
    return run_backup(request, RecordingHooks())


def member_bytes(archive: Path) -> tuple[tarfile.TarInfo, bytes]:
    with open(archive, "rb") as handle:
        raw = zstandard.ZstdDecompressor().stream_reader(handle).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        (info,) = tar.getmembers()
        return info, tar.extractfile(info).read()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_the_snapshot_is_consistent_while_another_process_writes(tmp_path, journal):
    db = make_db(tmp_path / "app.db", journal)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(BATCH)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout.readline() == b"ready\n"
        result = backup(db, tmp_path / "dest")
    finally:
        writer.stdin.write(b"stop\n")
        writer.stdin.close()
        writer.wait(timeout=30)

    info, data = member_bytes(result.archive)
    assert info.name == "app.db" and info.size == len(data)
    copy = tmp_path / "copy.db"
    copy.write_bytes(data)
    check = sqlite3.connect(copy)
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    count = check.execute("SELECT count(*) FROM t").fetchone()[0]
    check.close()
    assert count >= 20_000 + 5 * BATCH and (count - 20_000) % BATCH == 0
    (entry,) = load_manifest(result.manifest).entries
    assert (entry.path, entry.type, entry.size) == ("app.db", "file", len(data))
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [
        f"{STEM}.manifest.json",
        f"{STEM}.tar.zst",
        f"{STEM}.tar.zst.sha256",
    ]


def test_the_archive_extracts_with_standard_tools(tmp_path):
    db = make_db(tmp_path / "app.db", "delete", rows=100)
    os.chmod(db, 0o640)
    result = backup(db, tmp_path / "dest")

    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(f"zstd -d < '{result.archive}' | tar -xf - -C '{out}'", shell=True, check=True)
    assert os.listdir(out) == ["app.db"]
    assert (out / "app.db").stat().st_mode & 0o777 == 0o640
    assert int((out / "app.db").stat().st_mtime) == int(db.stat().st_mtime)
    copy = sqlite3.connect(out / "app.db")
    assert copy.execute("SELECT count(*) FROM t").fetchone() == (100,)
    copy.close()
    check = subprocess.run("sha256sum -c *.sha256", shell=True, cwd=tmp_path / "dest")
    assert check.returncode == 0


def test_a_damaged_database_fails_the_integrity_check_and_publishes_nothing(tmp_path):
    db = make_db(tmp_path / "app.db", "delete", rows=5000)
    pages = db.stat().st_size // 4096
    with open(db, "r+b") as handle:
        handle.seek((pages - 2) * 4096 + 8)
        handle.write(b"\x01\x02" * 1000)

    dest = tmp_path / "dest"
    with pytest.raises(SourceError, match="failed SQLite's integrity check"):
        backup(db, dest)
    assert list(dest.iterdir()) == []  # no archive, and the snapshot is gone


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("just some text, not SQLite at all")
    with pytest.raises(SourceError, match="not a SQLite database"):
        backup(bogus, tmp_path / "dest")


def test_the_plan_reports_the_database_size(tmp_path):
    db = make_db(tmp_path / "app.db", "delete", rows=100)
    plan = plan_backup(kind="sqlite", location=str(db), excludes=())
    assert (plan.files, plan.bytes) == (1, db.stat().st_size)
