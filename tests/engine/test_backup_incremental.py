"""Differential and incremental backups of a directory: deltas against a base's tree."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from backups.engine.backup import BackupRequest, run_backup
from backups.engine.chain import Delta, compose
from backups.engine.errors import SourceError
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import load_manifest

SOURCE = {"name": "files", "kind": "directory", "location": "/x"}


def take(tree: Path, dest: Path, run: int, chain: list | None = None, **kwargs):
    """Back up `tree` as run `run`; with `chain` (manifests, full first), as a delta."""
    delta = None
    if chain:
        first = chain[0].header["run"]
        level = kwargs.pop("level", "incremental")
        delta = Delta(level=level, base=chain[-1].header["run"], full=first, tree=compose(chain))
    hooks = RecordingHooks()
    result = run_backup(
        BackupRequest(
            kind=kwargs.pop("kind", "directory"),
            location=str(tree),
            dest_dir=dest,
            stem=f"20260101T0000{run:02d}Z-{run}",
            manifest_header={"run": run, "source": SOURCE},
            delta=delta,
            **kwargs,
        ),
        hooks,
    )
    return result, load_manifest(result.manifest)


def members(archive: Path) -> list[str]:
    listing = subprocess.run(
        f"zstd -dc '{archive}' | tar -tf -", shell=True, check=True, capture_output=True
    ).stdout
    return [name.rstrip("/") for name in os.fsdecode(listing).splitlines()]


def test_a_full_records_what_change_detection_compares(tree, tmp_path):
    _, manifest = take(tree, tmp_path / "dest", 1)

    assert manifest.level == "full" and manifest.header["format"] == 2
    by_path = {entry.path: entry for entry in manifest.entries}
    info = os.lstat(tree / "sub" / "text.txt")
    entry = by_path["sub/text.txt"]
    assert (entry.mtime_ns, entry.ino, entry.ctime_ns) == (
        info.st_mtime_ns,
        info.st_ino,
        info.st_ctime_ns,
    )
    assert by_path["sub"].ino == os.lstat(tree / "sub").st_ino
    assert by_path["link"].ino == os.lstat(tree / "link").st_ino


def test_an_incremental_of_an_unchanged_tree_stores_nothing(tree, tmp_path):
    dest = tmp_path / "dest"
    _, full = take(tree, dest, 1)
    result, delta = take(tree, dest, 2, [full])

    assert delta.entries == [] and delta.deleted == []
    assert delta.header["level"] == "incremental"
    assert (delta.header["base"], delta.header["full"]) == (1, 1)
    assert members(result.archive) == []
    assert result.size < 200


def test_an_incremental_holds_only_new_and_changed_files_and_lists_the_deleted(tree, tmp_path):
    dest = tmp_path / "dest"
    _, full = take(tree, dest, 1)
    (tree / "sub" / "text.txt").write_bytes(b"changed\n")
    (tree / "added.txt").write_bytes(b"new\n")
    (tree / "b511.bin").unlink()
    result, delta = take(tree, dest, 2, [full])

    stored = members(result.archive)
    # text.txt was rewritten in place, so its folder did not change; the root is never a
    # member.
    assert sorted(stored) == ["added.txt", "sub/text.txt"]
    assert sorted(e.path for e in delta.entries if e.type == "file") == [
        "added.txt",
        "sub/text.txt",
    ]
    assert delta.deleted == ["b511.bin"]
    assert delta.total_files == 2


def test_a_differential_is_relative_to_the_full_not_to_the_last_incremental(tree, tmp_path):
    dest = tmp_path / "dest"
    _, full = take(tree, dest, 1)
    (tree / "one.txt").write_bytes(b"1\n")
    _, first = take(tree, dest, 2, [full])
    (tree / "two.txt").write_bytes(b"2\n")
    result, differential = take(tree, dest, 3, [full], level="differential")

    assert differential.level == "differential" and differential.base == 1
    files = sorted(e.path for e in differential.entries if e.type == "file")
    assert files == ["one.txt", "two.txt"]
    assert first.level == "incremental"


def test_a_chain_composes_to_the_tree_as_of_its_last_backup(tree, tmp_path):
    dest = tmp_path / "dest"
    _, full = take(tree, dest, 1)
    (tree / "sub" / "random.bin").unlink()
    (tree / "empty").rmdir()
    _, first = take(tree, dest, 2, [full])
    (tree / "small.txt").write_bytes(b"bigger than before\n")
    _, second = take(tree, dest, 3, [full, first])
    _, again = take(tree, dest, 4)

    composed = compose([full, first, second])
    expected = {e.path: (e.type, e.size, e.sha256) for e in again.entries}
    assert {p: (e.type, e.size, e.sha256) for p, e in composed.items()} == expected


def test_rehash_stores_a_file_whose_content_changed_under_the_same_metadata(tree, tmp_path):
    dest = tmp_path / "dest"
    _, full = take(tree, dest, 1)
    target = tree / "b512.bin"
    target.write_bytes(b"x" * 512)
    info = os.lstat(target)
    # The base believes the file had this very metadata: only its content differs, as
    # after a change that kept size, mtime, inode and ctime (or bit rot under them).
    for entry in full.entries:
        if entry.path == "b512.bin":
            entry.mtime_ns, entry.ino, entry.ctime_ns = (
                info.st_mtime_ns,
                info.st_ino,
                info.st_ctime_ns,
            )
    _, quick = take(tree, dest, 2, [full])
    result, rehashed = take(tree, dest, 3, [full], rehash=True)

    assert "b512.bin" not in {e.path for e in quick.entries}
    assert "b512.bin" in {e.path for e in rehashed.entries}
    assert any("b512.bin" in w and "content changed" in w for w in result.warnings)


def test_a_database_source_has_no_delta(tmp_path, tree):
    import sqlite3

    database = tmp_path / "app.db"
    sqlite3.connect(database).close()
    _, full = take(tree, tmp_path / "dest", 1)
    with pytest.raises(SourceError, match="always takes a full"):
        take(database, tmp_path / "dest", 2, [full], kind="sqlite")


def test_a_format_one_manifest_still_reads_as_a_full(tree, tmp_path):
    result, _ = take(tree, tmp_path / "dest", 1)
    data = json.loads(result.manifest.read_text())
    data["format"] = 1
    data.pop("level")
    for entry in data["entries"]:
        for name in ("mtime_ns", "ino", "ctime_ns"):
            entry.pop(name, None)
    result.manifest.write_text(json.dumps(data))

    manifest = load_manifest(result.manifest)
    assert manifest.level == "full" and manifest.entries[0].mtime_ns is None
