"""Restoring a SQLite backup: to a new file, or into the live database readers have open."""

from __future__ import annotations

import io
import sqlite3
import tarfile
import threading

import pytest

from backups.engine.errors import ArchiveError, TargetError
from backups.engine.hooks import RecordingHooks
from backups.engine.restore import RestoreRequest, check_target, restore_archive
from tests.engine.restore_helpers import (
    count_rows,
    database_archive,
    leftovers,
    make_database,
    write_archive,
)


def request_for(backup, target, **options):
    return RestoreRequest(
        archive=backup.archive,
        manifest=backup.manifest,
        kind="sqlite",
        target=str(target),
        **options,
    )


@pytest.fixture
def live(tmp_path):
    return _live(tmp_path)


def _live(tmp_path, wal=False):
    (tmp_path / "live").mkdir(exist_ok=True)
    return make_database(tmp_path / "live" / "app.db", rows=500, wal=wal)


def shrink(path, keep):
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM projects WHERE id > ?", (keep,))
    db.close()


def test_restore_to_a_new_file_gives_the_snapshot(live, tmp_path):
    backup = database_archive(live, tmp_path / "archives")
    target = tmp_path / "restored.db"

    result = restore_archive(request_for(backup, target), RecordingHooks())

    assert count_rows(target) == 500
    assert result.target == str(target)
    assert {check["name"] for check in result.checks} == {"checksum", "contents", "database"}
    assert leftovers(tmp_path) == []


def test_restore_refuses_an_existing_database_file_without_in_place(live, tmp_path):
    backup = database_archive(live, tmp_path / "archives")

    with pytest.raises(TargetError, match="exists"):
        check_target(request_for(backup, live))


def test_restore_refuses_a_stray_wal_file_for_a_new_database(live, tmp_path):
    backup = database_archive(live, tmp_path / "archives")
    (tmp_path / "restored.db-wal").write_bytes(b"stale")

    with pytest.raises(TargetError, match="-wal"):
        check_target(request_for(backup, tmp_path / "restored.db"))


@pytest.mark.parametrize("wal", [False, True])
def test_restore_in_place_while_a_reader_has_the_database_open(tmp_path, wal):
    live = _live(tmp_path, wal=wal)
    backup = database_archive(live, tmp_path / "archives")
    shrink(live, 10)
    reader = sqlite3.connect(live, timeout=30)
    assert reader.execute("SELECT COUNT(*) FROM projects").fetchone() == (10,)
    seen, errors, stop = set(), [], threading.Event()

    def keep_reading():
        connection = sqlite3.connect(live, timeout=30)
        while not stop.is_set():
            try:
                seen.add(connection.execute("SELECT COUNT(*) FROM projects").fetchone()[0])
            except sqlite3.Error as error:  # pragma: no cover - the failure being tested
                errors.append(error)
        connection.close()

    thread = threading.Thread(target=keep_reading)
    thread.start()
    try:
        restore_archive(request_for(backup, live, in_place=True), RecordingHooks())
    finally:
        stop.set()
        thread.join()

    assert errors == []
    assert seen <= {10, 500}
    assert reader.execute("SELECT COUNT(*) FROM projects").fetchone() == (500,)
    assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    reader.close()
    assert leftovers(tmp_path / "live") == []


def test_restore_refuses_a_snapshot_that_fails_the_integrity_check(live, tmp_path):
    snapshot_dir = tmp_path / "bad"
    snapshot_dir.mkdir()
    good = live.read_bytes()
    damaged = good[:8192] + bytes(len(good) - 8192)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("app.db")
        info.size = len(damaged)
        tar.addfile(info, io.BytesIO(damaged))
    backup = write_archive(tmp_path / "archives", buffer.getvalue(), kind="sqlite")
    shrink(live, 10)

    with pytest.raises(ArchiveError, match="integrity_check"):
        restore_archive(request_for(backup, live, in_place=True), RecordingHooks())

    assert count_rows(live) == 10
    assert leftovers(tmp_path / "live") == []


def test_a_live_file_that_is_not_a_database_is_refused_and_left_as_it_was(live, tmp_path):
    backup = database_archive(live, tmp_path / "archives")
    damaged = b"not a database, " * 512
    live.write_bytes(damaged)

    with pytest.raises(TargetError, match="cannot be read.*move it and its -wal"):
        restore_archive(request_for(backup, live, in_place=True), RecordingHooks())

    assert live.read_bytes() == damaged
    assert leftovers(tmp_path / "live") == []
