"""A restore killed half-way (SIGKILL of a real process) never loses the original data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backups.engine.hooks import RecordingHooks
from backups.engine.restore import RestoreRequest, recover_interrupted, restore_archive
from tests.engine.restore_helpers import (
    archive_of,
    count_rows,
    database_archive,
    leftovers,
    make_database,
    make_tree,
    snapshot,
)

ROOT = Path(__file__).resolve().parents[2]

# The child restores in place; its hooks can kill it at a log line or signal progress.
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    from backups.engine.hooks import Hooks
    from backups.engine.restore import RestoreRequest, restore_archive

    args = json.loads(sys.argv[1])
    if args.get("mount"):
        # The target stands for a mount point: staging happens inside it.
        real_ismount = os.path.ismount
        os.path.ismount = lambda path: os.fspath(path) == args["target"] or real_ismount(path)

    if args.get("die_in_swap"):
        # Killed right after the first live entry was moved aside, path by path.
        real_rename = os.rename

        def rename(src, dst, *rest, **dirs):
            real_rename(src, dst, *rest, **dirs)
            if dirs.get("dst_dir_fd") is not None:
                os.kill(os.getpid(), signal.SIGKILL)

        os.rename = rename

    class Hooks(Hooks):
        checks = 0

        def check(self):
            self.checks += 1
            if self.checks == 3:
                Path(args["marker"]).write_text("extracting")
            if args.get("slow"):
                time.sleep(0.05)

        def log(self, line):
            if args.get("die_at") and line.startswith(args["die_at"]):
                os.kill(os.getpid(), signal.SIGKILL)

        def progress(self, progress):
            if args.get("die_in_copy") and progress.current == "copying into place":
                if progress.bytes_done:
                    os.kill(os.getpid(), signal.SIGKILL)

    restore_archive(
        RestoreRequest(
            archive=Path(args["archive"]),
            manifest=Path(args["manifest"]),
            kind=args["kind"],
            target=args["target"],
            in_place=True,
            state_dir=Path(args["state"]),
            run_id="7",
        ),
        Hooks(),
    )
    """
)


def start_child(tmp_path, backup, target, kind="directory", **options):
    args = {
        "archive": str(backup.archive),
        "manifest": str(backup.manifest),
        "kind": kind,
        "target": str(target),
        "marker": str(tmp_path / "marker"),
        "state": str(tmp_path / "state"),
        **options,
    }
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def journals(tmp_path) -> list[str]:
    """Return the runs whose journals wait in the state folder."""
    folder = tmp_path / "state"
    names = os.listdir(folder) if folder.exists() else []
    return sorted(name.split(".")[0] for name in names if name.endswith(".journal"))


@pytest.fixture
def setup(tmp_path):
    source = make_tree(tmp_path / "source")
    (source / "large.bin").write_bytes(os.urandom(12 << 20))
    backup = archive_of(source, tmp_path / "archives")
    # The live data has moved on since the backup: that is what must survive a crash.
    (source / "written-after-the-backup.txt").write_text("precious\n")
    return source, backup, snapshot(source)


def test_sigkill_while_extracting_leaves_the_original_in_place(tmp_path, setup):
    source, backup, before = setup
    child = start_child(tmp_path, backup, source, slow=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "marker").exists():
        assert child.poll() is None, "the restore ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)

    child.send_signal(signal.SIGKILL)
    child.wait()

    assert snapshot(source) == before
    assert journals(tmp_path) == ["restore-7"]
    done = recover_interrupted(tmp_path / "state")
    assert any("staging" in line for line in done)
    assert snapshot(source) == before
    assert leftovers(tmp_path) == []
    assert journals(tmp_path) == []


@pytest.mark.parametrize(
    "die_at",
    ["Moved the current data aside", "Moved the restored data into place"],
)
def test_sigkill_during_the_swap_is_undone_by_recovery(tmp_path, setup, die_at):
    source, backup, before = setup
    child = start_child(tmp_path, backup, source, die_at=die_at)

    assert child.wait(timeout=60) == -signal.SIGKILL
    if die_at.startswith("Moved the current"):
        assert not source.exists()  # the original sits aside, under the journal's care

    done = recover_interrupted(tmp_path / "state")

    assert f"Put the original data back at {source}." in done
    assert snapshot(source) == before
    assert leftovers(tmp_path) == []
    assert journals(tmp_path) == []


def test_a_new_restore_first_recovers_an_interrupted_one(tmp_path, setup):
    source, backup, before = setup
    child = start_child(tmp_path, backup, source, die_at="Moved the current data aside")
    child.wait(timeout=60)
    hooks = RecordingHooks()

    restore_archive(
        RestoreRequest(
            archive=backup.archive,
            manifest=backup.manifest,
            kind="directory",
            target=str(source),
            in_place=True,
            state_dir=tmp_path / "state",
            run_id="8",
        ),
        hooks,
    )

    assert any("Put the original data back" in line for line in hooks.lines)
    assert not (source / "written-after-the-backup.txt").exists()
    assert leftovers(tmp_path) == []


def test_recovery_leaves_a_running_restore_alone(tmp_path, setup):
    source, backup, before = setup
    child = start_child(tmp_path, backup, source, slow=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "marker").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)

        assert recover_interrupted(tmp_path / "state") == []
        assert journals(tmp_path) == ["restore-7"]
    finally:
        child.kill()
        child.wait()
    recover_interrupted(tmp_path / "state")
    assert snapshot(source) == before


def test_sigkill_while_copying_into_a_live_database_keeps_it_whole(tmp_path):
    live = make_database(tmp_path / "app.db", rows=50_000)
    with_padding = f"UPDATE projects SET name = name || '{'x' * 200}'"
    import sqlite3

    with sqlite3.connect(live) as db:
        db.execute(with_padding)
    db.close()
    backup = database_archive(live, tmp_path / "archives")
    with sqlite3.connect(live) as db:
        db.execute("DELETE FROM projects WHERE id > 10")
    db.close()

    child = start_child(tmp_path, backup, live, kind="sqlite", die_in_copy=True)
    assert child.wait(timeout=60) == -signal.SIGKILL

    with sqlite3.connect(live) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    assert count_rows(live) in (10, 50_000)
    recover_interrupted(tmp_path / "state")
    assert count_rows(live) == 10
    assert leftovers(tmp_path) == []
    assert journals(tmp_path) == []


def test_sigkill_in_a_mount_point_swap_is_undone_from_the_state_folder(tmp_path, setup):
    # A mount point is restored path by path, with staging inside it; the journal is not.
    source, backup, before = setup
    child = start_child(tmp_path, backup, source, mount=True, die_in_swap=True)
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert snapshot(source) != before
    assert not [name for name in os.listdir(source) if name.endswith(".journal")]

    done = recover_interrupted(tmp_path / "state")

    assert any(line.startswith("Put the original") for line in done)
    assert snapshot(source) == before
    assert leftovers(source) == [] and journals(tmp_path) == []
