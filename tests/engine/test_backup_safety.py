"""What a backup guarantees when things go wrong: cancel, signals, kills, full disks, fencing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backups.engine import atomic
from backups.engine.backup import BackupRequest, run_backup
from backups.engine.errors import Cancelled, FencedError, NoSpaceError
from backups.engine.hooks import RecordingHooks

from .conftest import make_tree

REPO = Path(__file__).resolve().parents[2]
STEM = "20260101T000000Z-9"

CHILD = r"""
import signal, sys, time
from pathlib import Path
from backups.engine.backup import BackupRequest, run_backup
from backups.engine.errors import Cancelled
from backups.engine.hooks import Hooks

source, dest, mode = sys.argv[1:4]


class SlowHooks(Hooks):
    # A slow source: every chunk takes a while, so the signal lands mid-stream.
    stop = False
    announced = False

    def check(self):
        if self.stop:
            raise Cancelled("Interrupted; nothing was published.")
        time.sleep(0.02)

    def progress(self, progress):
        if not self.announced and progress.bytes_done:
            self.announced = True
            print("streaming", flush=True)


hooks = SlowHooks()
if mode == "handler":
    # What a worker does: turn SIGTERM/SIGINT into a cancel that check() raises.
    def stop(signum, frame):
        hooks.stop = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
request = BackupRequest(
    kind="directory", location=source, dest_dir=Path(dest), stem="20260101T000000Z-9"
)
try:
    run_backup(request, hooks)
except Cancelled:
    sys.exit(3)
except KeyboardInterrupt:
    sys.exit(4)
print("finished", flush=True)
"""


@pytest.fixture
def big_source(tmp_path: Path) -> Path:
    source = tmp_path / "big"
    source.mkdir()
    for index in range(3):
        (source / f"part{index}.bin").write_bytes(os.urandom(24 << 20))
    return source


def start_child(source: Path, dest: Path, mode: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(source), str(dest), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    line = child.stdout.readline()
    assert line == b"streaming\n", line
    return child


def processes_mentioning(text: str) -> list[int]:
    """Return the pids whose command line mentions `text` (a leftover tar, say)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


def wait_until_gone(text: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (pids := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize(
    ("signum", "mode", "status"),
    [
        (signal.SIGINT, "default", 4),  # Ctrl-C with Python's own handler
        (signal.SIGINT, "handler", 3),
        (signal.SIGTERM, "handler", 3),
    ],
)
def test_a_signal_stops_the_backup_and_leaves_nothing(big_source, tmp_path, signum, mode, status):
    dest = tmp_path / "dest"
    child = start_child(big_source, dest, mode)
    assert any(name.endswith(".tmp") for name in names(dest))
    sent = time.monotonic()
    child.send_signal(signum)
    try:
        assert child.wait(timeout=5) == status
    finally:
        child.kill()
    assert time.monotonic() - sent < 5
    assert names(dest) == []
    assert wait_until_gone(str(big_source)) == []


def test_sigkill_mid_write_leaves_only_temporary_files(big_source, tmp_path):
    dest = tmp_path / "dest"
    child = start_child(big_source, dest, "default")
    child.kill()
    child.wait(timeout=5)

    left = names(dest)
    assert left and all(name.endswith(".tmp") for name in left), left
    assert f"{STEM}.tar.zst.tmp" in left
    assert sorted(p.name for p in atomic.stale_temps(dest)) == left
    # tar notices its reader is gone and exits by itself.
    assert wait_until_gone(str(big_source)) == []


def test_a_cancel_from_check_kills_tar_and_removes_the_temporary_file(big_source, tmp_path):
    class CancelLater(RecordingHooks):
        calls = 0

        def check(self):
            self.calls += 1
            if self.calls == 5:
                raise Cancelled("Cancelled by a user.")

    dest = tmp_path / "dest"
    request = BackupRequest(kind="directory", location=str(big_source), dest_dir=dest, stem=STEM)
    with pytest.raises(Cancelled):
        run_backup(request, CancelLater())
    assert names(dest) == []
    assert wait_until_gone(str(big_source), timeout=2) == []


def test_a_fenced_publish_leaves_nothing(tmp_path):
    source = make_tree(tmp_path / "tree")

    class Fenced(RecordingHooks):
        def publish(self, action):
            raise FencedError("Run #9 is no longer owned by this worker.")

    dest = tmp_path / "dest"
    request = BackupRequest(kind="directory", location=str(source), dest_dir=dest, stem=STEM)
    with pytest.raises(FencedError):
        run_backup(request, Fenced())
    assert names(dest) == []


def test_the_archive_is_renamed_last_inside_publish(tmp_path, monkeypatch):
    source = make_tree(tmp_path / "tree")
    dest = tmp_path / "dest"
    renamed: list[str] = []
    real_rename = os.rename

    def rename(src, dst):
        renamed.append(Path(dst).name)
        if Path(dst).name.endswith(".tar.zst"):
            # At the commit point the sidecar and manifest are already in place.
            assert (dest / f"{STEM}.tar.zst.sha256").exists()
            assert (dest / f"{STEM}.manifest.json").exists()
        real_rename(src, dst)

    inside = []

    class Watching(RecordingHooks):
        def publish(self, action):
            inside.append(list(renamed))
            action()

    monkeypatch.setattr(atomic.os, "rename", rename)
    request = BackupRequest(kind="directory", location=str(source), dest_dir=dest, stem=STEM)
    run_backup(request, Watching())
    assert inside == [[]]  # nothing reached a final name before publish
    assert renamed == [f"{STEM}.tar.zst.sha256", f"{STEM}.manifest.json", f"{STEM}.tar.zst"]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs: a disk that fills up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_full_disk_fails_clearly_and_leaves_earlier_archives_alone(tmp_path, small_disk):
    dest = small_disk / "files"
    small = make_tree(tmp_path / "small")
    earlier = run_backup(
        BackupRequest(kind="directory", location=str(small), dest_dir=dest, stem="earlier-1"),
        RecordingHooks(),
    )
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    big = tmp_path / "big"
    big.mkdir()
    (big / "random.bin").write_bytes(os.urandom(6 << 20))

    request = BackupRequest(kind="directory", location=str(big), dest_dir=dest, stem=STEM)
    with pytest.raises(NoSpaceError) as failure:
        run_backup(request, RecordingHooks())
    assert str(dest / f"{STEM}.tar.zst") in str(failure.value)
    assert "No space left" in str(failure.value)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert earlier.archive.name in before
    assert wait_until_gone(str(big), timeout=2) == []


def test_a_reserve_larger_than_the_free_space_refuses_up_front(tmp_path, small_disk):
    source = make_tree(tmp_path / "tree")
    dest = small_disk / "files"
    free = atomic.free_bytes(small_disk)
    request = BackupRequest(
        kind="directory", location=str(source), dest_dir=dest, stem=STEM, reserve_bytes=free + 1
    )
    with pytest.raises(
        NoSpaceError, match=rf"Not enough free space in {dest}.*nothing was written"
    ):
        run_backup(request, RecordingHooks())
    assert names(dest) == []
