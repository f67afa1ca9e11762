"""Backing up a directory: the archive, sidecar and manifest, checked with standard tools."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from backups.engine.backup import BackupRequest, plan_backup, run_backup
from backups.engine.errors import EngineError, SourceError
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import load_manifest

from .conftest import LONG_FILE, MTIME, NEWLINE, NON_UTF8, sha256_of

STEM = "20260101T000000Z-42"
HEADER = {
    "run": 42,
    "source": {"name": "files", "kind": "directory", "location": "/x"},
    "started_at": "2026-01-01T00:00:00+00:00",
}


def backup(source: Path, dest: Path, **kwargs):
    hooks = kwargs.pop("hooks", None) or RecordingHooks()
    request = BackupRequest(
        kind=kwargs.pop("kind", "directory"),
        location=str(source),
        dest_dir=dest,
        stem=kwargs.pop("stem", STEM),
        manifest_header=dict(HEADER),
        **kwargs,
    )
    return run_backup(request, hooks), hooks


def extract(archive: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(f"zstd -d < '{archive}' | tar -xf - -C '{target}'", shell=True, check=True)


def snapshot(root: Path) -> dict[bytes, tuple]:
    """Describe a tree: type, contents hash or link target, mode and mtime of each entry."""
    found = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            rel = os.path.relpath(path, broot)
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", stat.S_IMODE(info.st_mode), int(info.st_mtime))
            else:
                digest = sha256_of(Path(os.fsdecode(path)))
                found[rel] = ("file", digest, stat.S_IMODE(info.st_mode), int(info.st_mtime))
    return found


def test_the_archive_reproduces_the_tree_with_zstd_and_gnu_tar(tree, tmp_path):
    result, hooks = backup(tree, tmp_path / "dest")

    assert result.status == "succeeded" and not result.warnings
    out = tmp_path / "out"
    extract(result.archive, out)
    assert snapshot(out) == snapshot(tree)
    assert (out / "hard").stat().st_ino == (out / "small.txt").stat().st_ino
    assert os.readlink(out / "dangling") == "does/not/exist"
    assert (out / LONG_FILE).read_bytes() == b"deep\n"
    assert (out / NON_UTF8).exists() and (out / NEWLINE).exists()


def test_the_files_on_disk_follow_the_contract(tree, tmp_path):
    dest = tmp_path / "dest"
    result, _ = backup(tree, dest)

    assert sorted(p.name for p in dest.iterdir()) == [
        f"{STEM}.manifest.json",
        f"{STEM}.tar.zst",
        f"{STEM}.tar.zst.sha256",
    ]
    assert result.archive == dest / f"{STEM}.tar.zst"
    assert result.sidecar.read_text() == f"{result.sha256}  {STEM}.tar.zst\n"
    sha256sum = subprocess.run(
        ["sha256sum", result.archive.name], cwd=dest, capture_output=True, check=True
    )
    assert sha256sum.stdout.split()[0].decode() == result.sha256
    assert result.size == result.archive.stat().st_size
    check = subprocess.run("sha256sum -c *.sha256", shell=True, cwd=dest, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_manifest_records_every_entry_with_hashes_of_the_source_files(tree, tmp_path):
    result, _ = backup(tree, tmp_path / "dest")
    data = json.loads(result.manifest.read_text())

    assert data["format"] == 2 and data["level"] == "full"
    assert data["run"] == 42 and data["source"] == HEADER["source"]
    assert data["started_at"] == HEADER["started_at"] and data["finished_at"]
    assert data["archive"] == {
        "name": result.archive.name,
        "size": result.size,
        "sha256": result.sha256,
        "compression": "zstd",
    }
    entries = {e.path: e for e in load_manifest(result.manifest).entries}
    files = [e for e in entries.values() if e.type == "file"]
    assert data["totals"] == {"files": len(files), "bytes": sum(e.size for e in files)}
    assert (result.files, result.bytes) == (len(files), sum(e.size for e in files))
    for entry in files:
        assert entry.sha256 == sha256_of(tree / entry.path), entry.path
    assert len(files) == sum(1 for p in tree.rglob("*") if p.is_file() and not p.is_symlink()) - 1
    plain = [e.path for e in files if "\n" not in e.path and e.path.isascii()]
    listing = subprocess.run(["sha256sum", *plain], cwd=tree, capture_output=True, check=True)
    for line in listing.stdout.decode().splitlines():
        digest, name = line.split("  ", 1)
        assert entries[name].sha256 == digest
    assert entries["link"].type == "symlink" and entries["link"].target == "small.txt"
    assert entries["absolute"].target == "/etc/hostname"
    hard = [e for e in entries.values() if e.type == "hardlink"]
    assert len(hard) == 1 and {hard[0].path, hard[0].target} == {"hard", "small.txt"}
    assert entries["empty"].type == "dir"
    assert entries["private.key"].mode == 0o600
    assert entries["small.txt"].mtime == MTIME and isinstance(entries["small.txt"].mtime, int)
    assert entries[NON_UTF8].size == len(b"latin-1 name\n")


def test_names_that_look_like_options_or_escapes_are_stored_verbatim(tmp_path):
    source = tmp_path / "odd"
    source.mkdir()
    names = ["-C", "--help", "back\\slash", "tab\tname", "star*", "[x]"]
    for name in names:
        (source / name).write_text(name)
    result, _ = backup(source, tmp_path / "dest")

    assert sorted(e.path for e in load_manifest(result.manifest).entries) == sorted(names)
    out = tmp_path / "out"
    extract(result.archive, out)
    assert sorted(os.listdir(out)) == sorted(names)
    assert (out / "back\\slash").read_text() == "back\\slash"


def test_excludes_match_the_relative_path_or_the_name(tree, tmp_path):
    (tree / "sub" / "cache").mkdir()
    (tree / "sub" / "cache" / "big.tmp").write_text("x")
    (tree / "debug.log").write_text("x")
    result, hooks = backup(
        tree, tmp_path / "dest", excludes=["*.log", "cache", "sub/text.txt", "zo*"]
    )

    paths = {e.path for e in load_manifest(result.manifest).entries}
    assert "debug.log" not in paths
    assert not any(p.startswith("sub/cache") for p in paths)
    assert "sub/text.txt" not in paths and "sub/random.bin" in paths
    assert not any(p.startswith("zo") for p in paths)
    assert any("excluded 4 path(s)" in line for line in hooks.lines)


def test_the_plan_counts_and_lists_exclusions_and_writes_nothing(tree, tmp_path):
    before = sorted(tmp_path.rglob("*"))
    plan = plan_backup(kind="directory", location=str(tree), excludes=["sub", "*.bin"])

    assert sorted(plan.excluded) == ["b511.bin", "b512.bin", "b513.bin", "empty.bin", "sub"]
    assert plan.excluded_count == 5
    regular = [
        p for p in tree.rglob("*") if p.is_file() and not p.is_symlink() and "sub" not in p.parts
    ]
    regular = [p for p in regular if p.suffix != ".bin"]
    assert plan.files == len(regular) - 1  # "hard" and "small.txt" are one file
    assert plan.bytes == sum(p.stat().st_size for p in regular if p.name != "hard")
    assert sorted(tmp_path.rglob("*")) == before


def test_the_plan_bounds_its_list_of_exclusions(tmp_path):
    source = tmp_path / "many"
    source.mkdir()
    for index in range(150):
        (source / f"{index}.log").write_text("x")
    plan = plan_backup(kind="directory", location=str(source), excludes=["*.log"])
    assert plan.excluded_count == 150 and len(plan.excluded) == 100 and plan.files == 0


def test_fifos_and_sockets_are_skipped_with_a_warning_naming_each(tree, tmp_path):
    os.mkfifo(tree / "pipe")
    server = socket.socket(socket.AF_UNIX)
    sock_path = tree / "sub" / "sock"
    server.bind(str(sock_path))
    try:
        result, _ = backup(tree, tmp_path / "dest")
    finally:
        server.close()

    assert result.status == "warning"
    assert any(w.startswith("pipe: skipped, a FIFO") for w in result.warnings)
    assert any(w.startswith("sub/sock: skipped, a socket") for w in result.warnings)
    paths = {e.path for e in load_manifest(result.manifest).entries}
    assert "pipe" not in paths and "sub/sock" not in paths and "small.txt" in paths


@pytest.mark.parametrize(
    ("compression", "suffix", "reader"),
    [("gzip", ".tar.gz", "gzip -d"), ("none", ".tar", "cat")],
)
def test_other_compressions_are_standard_files(tree, tmp_path, compression, suffix, reader):
    result, _ = backup(tree, tmp_path / "dest", compression=compression)

    assert result.archive.name == STEM + suffix
    assert result.sidecar.name == STEM + suffix + ".sha256"
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(f"{reader} < '{result.archive}' | tar -xf - -C '{out}'", shell=True, check=True)
    assert snapshot(out) == snapshot(tree)
    assert json.loads(result.manifest.read_text())["archive"]["compression"] == compression


def test_a_file_growing_while_it_is_read_gives_a_warning_and_a_valid_archive(tmp_path):
    source = tmp_path / "live"
    source.mkdir()
    log = source / "growing.log"
    log.write_bytes(os.urandom(48 << 20))
    (source / "steady.txt").write_text("steady\n")
    stop = threading.Event()

    def append() -> None:
        with open(log, "ab", buffering=0) as handle:
            while not stop.is_set():
                handle.write(b"more\n" * 100)
                time.sleep(0.0005)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        result, _ = backup(source, tmp_path / "dest")
    finally:
        stop.set()
        writer.join()

    assert result.status == "warning"
    assert any(w == "growing.log: file changed as we read it" for w in result.warnings)
    out = tmp_path / "out"
    extract(result.archive, out)
    assert (out / "steady.txt").read_text() == "steady\n"
    entries = {e.path: e for e in load_manifest(result.manifest).entries}
    assert entries["growing.log"].sha256 == sha256_of(out / "growing.log")


@pytest.fixture
def fake_tar(tmp_path, monkeypatch):
    """Put a `tar` first on PATH that runs GNU tar, then adds a message and an exit status."""
    real_tar = shutil.which("tar")
    folder = tmp_path / "fake-bin"
    folder.mkdir()

    def install(message: str, status: int) -> None:
        script = folder / "tar"
        script.write_text(f'#!/bin/sh\n{real_tar} "$@"\necho "{message}" >&2\nexit {status}\n')
        script.chmod(0o755)

    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return install


@pytest.mark.parametrize(
    ("message", "status", "warning"),
    [
        ("tar: small.txt: file changed as we read it", 1, "small.txt: file changed as we read it"),
        (
            "tar: run.sh: Warning: Cannot open: Permission denied",
            0,
            "run.sh: Warning: Cannot open: Permission denied",
        ),
        (
            "tar: gone.txt: File removed before we read it",
            1,
            "gone.txt: File removed before we read it",
        ),
        (
            "tar: sub/x: Warning: Cannot stat: No such file or directory",
            0,
            "sub/x: Warning: Cannot stat: No such file or directory",
        ),
    ],
)
def test_tar_warnings_about_one_file_become_run_warnings(
    tree, tmp_path, fake_tar, message, status, warning
):
    fake_tar(message, status)
    result, hooks = backup(tree, tmp_path / "dest")

    assert result.status == "warning"
    assert result.warnings == [warning]
    assert hooks.warnings == [warning]
    assert result.archive.exists()


def test_tar_failing_fails_the_run_with_its_message_and_publishes_nothing(tree, tmp_path, fake_tar):
    fake_tar("tar: ./x: Cannot write: Broken disk", 2)
    dest = tmp_path / "dest"
    with pytest.raises(SourceError, match="exit status 2.*Cannot write: Broken disk"):
        backup(tree, dest)
    assert list(dest.iterdir()) == []


def test_the_archive_folder_inside_the_source_is_left_out(tree, tmp_path):
    dest = tree / "backups" / "files"
    first, _ = backup(tree, dest, stem="20260101T000000Z-1")
    second, _ = backup(tree, dest)

    paths = {e.path for e in load_manifest(second.manifest).entries}
    assert "backups" in paths  # its parent is part of the tree
    assert not any(p.startswith("backups/files") for p in paths)
    assert second.status == "succeeded" and first.archive.exists()


def test_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        backup(tmp_path / "nope", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_an_unknown_kind_or_compression_is_refused(tree, tmp_path):
    with pytest.raises(SourceError, match="Unknown source kind 'ftp'"):
        backup(tree, tmp_path / "dest", kind="ftp")
    with pytest.raises(EngineError, match="Unknown compression 'lz4'"):
        backup(tree, tmp_path / "dest", compression="lz4")
    assert not (tmp_path / "dest").exists()


def test_a_published_archive_is_never_overwritten(tree, tmp_path):
    dest = tmp_path / "dest"
    first, _ = backup(tree, dest)
    before = first.archive.read_bytes()
    with pytest.raises(EngineError, match="already exists"):
        backup(tree, dest)
    assert first.archive.read_bytes() == before
    assert not list(dest.glob("*.tmp"))


def test_progress_reports_totals_and_the_bytes_done(tree, tmp_path):
    seen = []

    class Hooks(RecordingHooks):
        def progress(self, progress):
            seen.append((progress.bytes_done, progress.bytes_total, progress.files_total))

    result, _ = backup(tree, tmp_path / "dest", hooks=Hooks())
    assert seen[-1] == (result.bytes, result.bytes, result.files)


def test_a_tree_of_many_long_names_is_fed_to_tar_in_turns_and_every_entry_has_its_stat(tmp_path):
    # Far more names than one batch and than tar's input pipe holds: the walk and tar's
    # reading of names take turns, and each entry still gets its own file's hash and stat.
    source = tmp_path / "many"
    folder = source / ("f" * 120)
    folder.mkdir(parents=True)
    for index in range(3000):
        (folder / f"{index:05d}-{'n' * 150}.txt").write_bytes(b"x" * (index % 7))
    result, _ = backup(source, tmp_path / "dest")

    entries = {entry.path: entry for entry in load_manifest(result.manifest).entries}
    files = sorted(folder.iterdir())
    assert len(entries) == len(files) + 1 and result.files == len(files)
    for path in files:
        entry = entries[str(path.relative_to(source))]
        info = path.lstat()
        assert (entry.ino, entry.mtime_ns, entry.ctime_ns) == (
            info.st_ino,
            info.st_mtime_ns,
            info.st_ctime_ns,
        )
        assert entry.sha256 == sha256_of(path) and entry.size == info.st_size
    listing = subprocess.run(
        f"zstd -d < '{result.archive}' | tar -tf -", shell=True, check=True, capture_output=True
    ).stdout.decode()
    assert listing.splitlines() == [f"{folder.name}/"] + [
        str(path.relative_to(source)) for path in files
    ]
