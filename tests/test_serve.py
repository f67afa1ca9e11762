"""`serve` (make run): web server and workers start together and stop together."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants_of(pid: int) -> list[int]:
    kids, frontier = [], [pid]
    while frontier:
        found = children_of(frontier.pop())
        kids += found
        frontier += found
    return kids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_answers_then_stops_web_and_workers_without_leftovers(tmp_path, stop_signal):
    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path / 'serve.sqlite3'}",
        ARCHIVE_ROOT=str(tmp_path / "archives"),
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--addr", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the web server never answered"
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.3)
        assert len(children_of(proc.pid)) == 2  # runserver and qcluster
        # qcluster forks its own sentinel, pusher, monitor and workers: all must go.
        # The web server can answer before qcluster has forked them, so wait for them.
        deadline = time.monotonic() + 30
        while len(kids := descendants_of(proc.pid)) <= 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(kids) > 2, "qcluster never started its workers"
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in kids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in kids)
    finally:
        if proc.poll() is None:
            proc.kill()


FAKE_KUBECTL = Path(__file__).resolve().parent / "engine" / "fake_kubectl"


@pytest.mark.slow
def test_stopping_serve_cancels_a_running_backup_and_leaves_no_process(tmp_path):
    pod = tmp_path / "pods" / "shop" / "db-0" / "data"
    pod.mkdir(parents=True)
    (pod / "orders.csv").write_text("1,apples\n")
    database = tmp_path / "serve.sqlite3"
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{database}",
        ARCHIVE_ROOT=str(tmp_path / "archives"),
        PATH=f"{FAKE_KUBECTL}{os.pathsep}{os.environ['PATH']}",
        FAKE_KUBECTL_ROOT=str(tmp_path / "pods"),
        FAKE_KUBECTL_STALL="120",  # a node that takes its time: the backup is still running
    )

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True,
            capture_output=True, text=True,
        )  # fmt: skip

    manage("migrate", "-v0")
    manage("policy", "add", "p", "--no-verify")
    manage("source", "add", "shop", "--kind", "kubernetes", "--location", "shop/db-0:/data",
           "--policy", "p")  # fmt: skip
    run_id = int(manage("backup", "shop").stdout)

    def run_row():
        with closing(sqlite3.connect(database, timeout=30)) as db:
            return db.execute(
                "SELECT status, error FROM backups_run WHERE id = ?", (run_id,)
            ).fetchone()

    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--addr", f"127.0.0.1:{free_port()}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while run_row()[0] != "running":
            assert time.monotonic() < deadline, "the workers never started the backup"
            time.sleep(0.2)
        kids = descendants_of(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in kids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in kids)
    finally:
        if proc.poll() is None:
            proc.kill()
    status, error = run_row()
    assert status == "cancelled"
    assert error.startswith("Cancelled: its worker was shut down (SIGTERM)")
    assert not list((tmp_path / "archives").rglob("*.tmp"))
