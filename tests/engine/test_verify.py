"""Verifying archives: checksum, contents, SQLite database checks, and restore drills."""

from __future__ import annotations

import json
import os

import pytest

from backups.engine.errors import Cancelled
from backups.engine.hooks import RecordingHooks
from backups.engine.verify import restore_drill, verify_archive
from tests.engine.restore_helpers import (
    CancelAfter,
    archive_of,
    database_archive,
    gnu_tar,
    make_database,
    make_tree,
    write_archive,
)


@pytest.fixture
def source(tmp_path):
    return make_tree(tmp_path / "source")


@pytest.fixture
def backup(source, tmp_path):
    return archive_of(source, tmp_path / "archives")


def verify(backup, kind="directory", **options):
    return verify_archive(
        archive=backup.archive,
        manifest=backup.manifest,
        kind=kind,
        hooks=RecordingHooks(),
        **options,
    )


def by_name(results):
    return {result["name"]: result for result in results}


def test_a_sound_archive_passes_checksum_and_contents(backup):
    results = verify(backup)

    assert [result["name"] for result in results] == ["checksum", "contents"]
    assert all(result["ok"] for result in results), results
    assert "matches the manifest and the checksum file" in results[0]["detail"]
    assert "match the manifest" in results[1]["detail"]


def test_a_missing_archive_fails_every_check_clearly(backup):
    backup.archive.unlink()

    results = verify(backup)

    assert [result["ok"] for result in results] == [False, False]
    assert all("is missing" in result["detail"] for result in results)


def test_a_zero_length_archive_fails_clearly(backup):
    backup.archive.write_bytes(b"")

    results = by_name(verify(backup))

    assert not results["checksum"]["ok"]
    assert "empty (0 bytes)" in results["checksum"]["detail"]


def test_a_truncated_archive_fails_both_checks(backup):
    data = backup.archive.read_bytes()
    backup.archive.write_bytes(data[: len(data) // 3])

    results = by_name(verify(backup))

    assert not results["checksum"]["ok"] and "truncated" in results["checksum"]["detail"]
    assert not results["contents"]["ok"] and "truncated" in results["contents"]["detail"]


def test_a_flipped_byte_is_reported_against_the_manifest_and_the_checksum_file(backup):
    data = bytearray(backup.archive.read_bytes())
    data[-100] ^= 0x01
    backup.archive.write_bytes(bytes(data))

    results = by_name(verify(backup))

    detail = results["checksum"]["detail"]
    assert not results["checksum"]["ok"]
    assert "the manifest says" in detail and "the checksum file says" in detail
    assert not results["contents"]["ok"]


def test_a_checksum_file_that_disagrees_is_named(backup):
    backup.sidecar.write_text(f"{'cd' * 32}  {backup.archive.name}\n")

    results = by_name(verify(backup, checks=["checksum"]))

    assert not results["checksum"]["ok"]
    assert "the checksum file says" in results["checksum"]["detail"]
    assert "the manifest says" not in results["checksum"]["detail"]


def test_a_missing_checksum_file_fails_the_checksum(backup):
    backup.sidecar.unlink()

    results = by_name(verify(backup, checks=["checksum"]))

    assert not results["checksum"]["ok"]
    assert "missing" in results["checksum"]["detail"]


def test_contents_names_missing_extra_and_differing_members(backup):
    data = json.loads(backup.manifest.read_text())
    entries = data["entries"]
    removed = [entry["path"] for entry in entries if entry["path"].startswith("many/")][:7]
    entries[:] = [entry for entry in entries if entry["path"] not in removed]
    entries += [{"path": f"ghost-{n}.txt", "type": "file", "size": 1} for n in range(2)]
    for entry in entries:
        if entry["path"] == "script.sh":
            entry["sha256"] = "1" * 64
    backup.manifest.write_text(json.dumps(data))

    results = by_name(verify(backup, checks=["contents"]))

    detail = results["contents"]["detail"]
    assert not results["contents"]["ok"]
    assert "2 entries of the manifest are missing from the archive: 'ghost-0.txt'" in detail
    assert "7 members are not in the manifest" in detail and "and 2 more" in detail
    assert "'script.sh' does not match its sha256" in detail


def test_a_newer_manifest_format_fails_with_a_clear_message(backup):
    data = json.loads(backup.manifest.read_text())
    data["format"] = 99
    backup.manifest.write_text(json.dumps(data))

    results = verify(backup)

    assert all(not result["ok"] and "upgrade" in result["detail"] for result in results)


def test_a_decompression_bomb_fails_the_contents_check(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("a")
    backup = write_archive(tmp_path / "archives", gnu_tar(small) + bytes(64 << 20))

    results = by_name(verify(backup, checks=["contents"]))

    assert not results["contents"]["ok"]
    assert "more than" in results["contents"]["detail"]


def test_verification_can_be_cancelled(backup):
    with pytest.raises(Cancelled):
        verify_archive(
            archive=backup.archive,
            manifest=backup.manifest,
            kind="directory",
            hooks=CancelAfter(0),
        )


@pytest.fixture
def database_backup(tmp_path):
    live = make_database(tmp_path / "app.db", rows=42)
    return database_archive(live, tmp_path / "archives")


def test_database_check_runs_integrity_check_and_queries(database_backup):
    queries = [
        {"sql": "SELECT COUNT(*) FROM projects", "expect": "> 0"},
        {"sql": "SELECT COUNT(*) FROM projects", "expect": "= 42"},
        {"sql": "SELECT COUNT(*) FROM projects", "expect": "== 42"},
        {"sql": "SELECT COUNT(*) FROM projects", "expect": ">= 42"},
        {"sql": "SELECT COUNT(*) FROM projects", "expect": "<= 42"},
        {"sql": "SELECT COUNT(*) FROM projects", "expect": "!= 0"},
        {"sql": "SELECT COUNT(*) FROM projects", "expect": "< 43"},
    ]

    results = by_name(
        verify(database_backup, kind="sqlite", checks=["database"], sqlite_queries=queries)
    )

    database = results["database"]
    assert database["ok"], database
    assert database["detail"].startswith("integrity_check: ok")
    assert [query["value"] for query in database["queries"]] == [42] * 7


def test_a_failing_query_fails_the_database_check_with_its_value(database_backup):
    queries = [
        {"sql": "SELECT COUNT(*) FROM projects", "expect": "> 100"},
        {"sql": "SELECT COUNT(*) FROM nope", "expect": "> 0"},
        {"sql": "SELECT 1", "expect": "about three"},
    ]

    results = by_name(
        verify(database_backup, kind="sqlite", checks=["database"], sqlite_queries=queries)
    )

    database = results["database"]
    assert not database["ok"]
    assert "returned 42 (expected > 100): FAILED" in database["detail"]
    assert "no such table: nope" in database["detail"]
    assert "cannot read the expectation" in database["detail"]


def test_check_queries_cannot_change_the_snapshot(database_backup):
    queries = [{"sql": "DELETE FROM projects", "expect": "= 0"}]

    results = by_name(
        verify(database_backup, kind="sqlite", checks=["database"], sqlite_queries=queries)
    )

    assert not results["database"]["ok"]
    assert "may only read" in results["database"]["detail"]


@pytest.mark.parametrize("sql", ["VACUUM INTO '{file}'", "ATTACH '{file}' AS other"])
def test_check_queries_cannot_write_a_file_elsewhere(database_backup, tmp_path, sql):
    planted = tmp_path / "copy.db"
    queries = [{"sql": sql.format(file=planted), "expect": "= 0"}]

    results = by_name(
        verify(database_backup, kind="sqlite", checks=["database"], sqlite_queries=queries)
    )

    assert not results["database"]["ok"]
    assert "may only read (SELECT), and this one asks for ATTACH" in results["database"]["detail"]
    assert not planted.exists()


def test_a_check_query_that_never_ends_is_stopped_at_its_time_limit(database_backup):
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"
    queries = [{"sql": endless, "expect": "> 0"}]

    results = by_name(
        verify(
            database_backup,
            kind="sqlite",
            checks=["database"],
            sqlite_queries=queries,
            query_time_s=0.2,
        )
    )

    assert not results["database"]["ok"]
    assert "stopped after 0.2 s, its time limit" in results["database"]["detail"]


def test_a_check_query_may_read_a_pragma_that_only_reports(database_backup):
    queries = [{"sql": "PRAGMA user_version", "expect": "= 0"}]

    results = by_name(
        verify(database_backup, kind="sqlite", checks=["database"], sqlite_queries=queries)
    )

    assert results["database"]["ok"], results


def test_the_database_check_fails_clearly_when_the_archive_is_damaged(database_backup):
    data = bytearray(database_backup.archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    database_backup.archive.write_bytes(bytes(data))

    results = by_name(verify(database_backup, kind="sqlite", checks=["checksum", "database"]))

    assert not results["checksum"]["ok"]
    assert not results["database"]["ok"]
    assert "cannot be checked" in results["database"]["detail"]


def test_a_drill_restores_verifies_times_and_cleans_up(backup, tmp_path):
    scratch = tmp_path / "scratch"

    result = restore_drill(
        archive=backup.archive,
        manifest=backup.manifest,
        kind="directory",
        scratch_dir=scratch,
        hooks=RecordingHooks(),
    )

    assert result["name"] == "drill" and result["ok"], result
    assert result["duration_s"] > 0
    assert "verified" in result["detail"]
    assert os.listdir(scratch) == []


def test_a_drill_of_a_damaged_archive_fails_and_cleans_up(backup, tmp_path):
    data = bytearray(backup.archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    backup.archive.write_bytes(bytes(data))
    scratch = tmp_path / "scratch"

    result = restore_drill(
        archive=backup.archive,
        manifest=backup.manifest,
        kind="directory",
        scratch_dir=scratch,
        hooks=RecordingHooks(),
    )

    assert not result["ok"]
    assert "damaged" in result["detail"]
    assert os.listdir(scratch) == []


def test_a_drill_of_a_sqlite_backup(database_backup, tmp_path):
    result = restore_drill(
        archive=database_backup.archive,
        manifest=database_backup.manifest,
        kind="sqlite",
        scratch_dir=tmp_path / "scratch",
        hooks=RecordingHooks(),
    )

    assert result["ok"], result
    assert os.listdir(tmp_path / "scratch") == []


def test_a_drill_of_an_awkward_tree(tree, tmp_path):
    backup = archive_of(tree, tmp_path / "archives")

    result = restore_drill(
        archive=backup.archive,
        manifest=backup.manifest,
        kind="kubernetes",
        scratch_dir=tmp_path / "scratch",
        hooks=RecordingHooks(),
    )

    assert result["ok"], result


OTHER = "f" * 64


def test_an_archive_that_is_not_the_one_the_catalog_recorded_fails_the_checksum(backup):
    # Archive, manifest and checksum file agree; the sha256 kept apart from them does not.
    results = by_name(verify(backup, catalog_sha256=OTHER))
    assert results["contents"]["ok"]
    checksum = results["checksum"]
    assert not checksum["ok"]
    assert f"but the catalog recorded {OTHER} when this backup was written" in checksum["detail"]
    assert "the files on disk are not the ones this backup wrote" in checksum["detail"]
    assert by_name(verify(backup, catalog_sha256=sha_of(backup)))["checksum"]["ok"]


@pytest.mark.parametrize("kind", ["directory", "sqlite"])
def test_a_drill_refuses_an_archive_the_catalog_does_not_know(kind, source, tmp_path):
    if kind == "sqlite":
        backup = database_archive(make_database(tmp_path / "app.db"), tmp_path / "archives")
    else:
        backup = archive_of(source, tmp_path / "archives")
    outcome = restore_drill(
        archive=backup.archive,
        manifest=backup.manifest,
        kind=kind,
        scratch_dir=tmp_path / "scratch",
        hooks=RecordingHooks(),
        catalog_sha256=OTHER,
    )
    assert not outcome["ok"]
    assert "the files on disk are not the ones this backup wrote" in outcome["detail"]


def sha_of(backup):
    return json.loads(backup.manifest.read_text())["archive"]["sha256"]
