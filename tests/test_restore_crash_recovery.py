"""An in-place restore killed half-way (SIGKILL) is rolled back when its run is reaped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child: it pauses itself the moment the original data has been moved aside,
# so the kill lands at the worst possible time of the swap.
RESTORE_AND_PAUSE = """
import os, signal, sys, django
django.setup()
if sys.argv[2] == "mount point":
    # The target stands for a mount point: it is restored path by path, staged inside it.
    real_ismount = os.path.ismount
    os.path.ismount = lambda path: os.fspath(path) == sys.argv[3] or real_ismount(path)
real_rename = os.rename
def rename(src, dst, *args, **kwargs):
    real_rename(src, dst, *args, **kwargs)
    if ".before-restore-" in str(dst) or kwargs.get("dst_dir_fd") is not None:
        os.kill(os.getpid(), signal.SIGSTOP)
os.rename = rename
from backups.models import Run
from backups.services.execution import run_execute
from backups.services.restore import restore_request
run = restore_request(backup=Run.objects.get(pk=int(sys.argv[1])), target=None,
                      in_place=True, trigger="cli", enqueue=False)
run_execute(run.pk)
"""

REAP = """
import django
django.setup()
from datetime import timedelta
from django.utils import timezone
from backups.models import Run
from backups.services.runs import reap_abandoned
Run.objects.filter(kind="restore").update(heartbeat_at=timezone.now() - timedelta(hours=1))
print(reap_abandoned())
"""


def tree(root: Path) -> dict:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["folder", "symlink to elsewhere", "mount point"])
def test_a_killed_in_place_restore_leaves_the_original_recoverable(tmp_path, layout):
    # The source's location may be a symlink to the real folder (the restore works on the
    # real path), or a mount point (the restore stages inside it): the reaper finds the
    # journal all the same.
    data = tmp_path / "real" / "data" if layout == "symlink to elsewhere" else tmp_path / "data"
    location = tmp_path / "data-link" if layout == "symlink to elsewhere" else data
    if location != data:
        location.symlink_to(data)
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("as backed up")
    (data / "sub" / "b.bin").write_bytes(os.urandom(4096))
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="dashboard.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        ARCHIVE_ROOT=str(tmp_path / "archives"),
        STATE_DIR=str(tmp_path / "state"),
    )

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True,
            capture_output=True, text=True,
        ).stdout  # fmt: skip

    manage("migrate", "-v0")
    manage("source", "add", "data", "--kind", "directory", "--location", str(location))
    backup = json.loads(manage("backup", "data", "--inline", "--json"))
    (data / "a.txt").write_text("changed since the backup")
    (data / "new.txt").write_text("written after the backup")
    live = tree(data)

    child = subprocess.Popen(
        [sys.executable, "-c", RESTORE_AND_PAUSE, str(backup["id"]), layout, str(data)],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not stopped(child.pid):
        assert child.poll() is None, "the restore ended before its swap"
        assert time.monotonic() < deadline, "the restore never reached its swap"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert tree(data) != live  # the live data really was moved aside

    reaped = subprocess.run(
        [sys.executable, "-c", REAP], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    assert reaped.stdout.strip() != "[]"
    assert tree(data) == live
    assert not [p for p in data.parent.iterdir() if p.name.startswith(".data.")]
    assert not [p for p in data.iterdir() if ".restore-" in p.name]
    assert not list((tmp_path / "state").iterdir())
