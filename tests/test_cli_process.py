"""The CLI as a real process: Ctrl-C and SIGTERM cancel cleanly; a TTY gets live progress."""

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def slow_source(tmp_path):
    """A source that takes seconds to back up: incompressible data through gzip level 9."""
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "random.bin", "wb") as handle:
        handle.write(os.urandom(160 * 1024 * 1024))
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path / 'cli.sqlite3'}",
        ARCHIVE_ROOT=str(tmp_path / "archives"),
    )

    def manage(*args, **kwargs):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, **kwargs
        )

    manage("migrate", "-v0")
    manage(
        "policy", "add", "slow", "--compression", "gzip", "--level", "9", stdout=subprocess.DEVNULL
    )
    manage("source", "add", "big", "--kind", "directory", "--location", str(data),
           "--policy", "slow", stdout=subprocess.DEVNULL)  # fmt: skip
    return env, tmp_path / "archives" / "big"


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_cancels_an_inline_backup_and_leaves_no_file(slow_source, stop):
    env, folder = slow_source
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "backup", "big", "--inline", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert wait_for(lambda: folder.is_dir() and any(folder.glob("*.tmp"))), "never started"
    sent = time.monotonic()
    proc.send_signal(stop)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5, "did not stop within a few seconds"
    assert proc.returncode == 1, stderr
    run = json.loads(stdout)
    assert run["status"] == "cancelled"
    assert run["archive"] is None
    assert list(folder.iterdir()) == []


@pytest.mark.slow
def test_a_terminal_sees_a_progress_line_within_a_second(slow_source):
    env, folder = slow_source
    leader, follower = pty.openpty()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "backup", "big", "--inline"],
        cwd=ROOT,
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    seen, first_at, frames = b"", None, 0
    try:
        while time.monotonic() - started < 20 and frames < 3:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                chunk = os.read(leader, 4096)
                seen += chunk
                if b" files" in chunk and b"/s" in chunk:
                    frames += chunk.count(b"\r")
                    first_at = first_at or time.monotonic()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        os.close(leader)
    assert first_at is not None, seen[-500:]
    # Python start-up and Django set-up come first; the line then shows within a second.
    assert frames >= 3, seen[-500:]
    assert b"%" in seen and b"ETA" in seen


def test_without_a_terminal_there_is_no_progress_noise(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "f").write_text("x")
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path / 'q.sqlite3'}",
        ARCHIVE_ROOT=str(tmp_path / "archives"),
    )
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "manage.py", *a], cwd=ROOT, env=env, capture_output=True, text=True
    )
    run("migrate", "-v0")
    run("source", "add", "d", "--kind", "directory", "--location", str(data))
    result = run("backup", "d", "--inline")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "ETA" not in result.stderr
    assert "succeeded" in result.stdout
