"""Restoring a point of a chain (a full, differentials, incrementals), by us and by plain tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from backups.engine.backup import BackupRequest, run_backup
from backups.engine.chain import Delta, compose
from backups.engine.errors import ArchiveError
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import load_manifest
from backups.engine.restore import RestoreRequest, restore_chain
from backups.engine.verify import restore_drill, verify_chain

from .restore_helpers import snapshot

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "restore-chain.sh"
SOURCE = {"name": "files", "kind": "directory", "location": "/x"}


class History:
    """A source tree backed up again and again into one folder, each point remembered."""

    def __init__(self, tree: Path, folder: Path) -> None:
        self.tree = tree
        self.folder = folder
        self.backups: dict[int, tuple] = {}  # run: (result, manifest, chain runs)
        self.expected: dict[int, dict] = {}

    def take(self, run: int, level: str = "full", base: int | None = None) -> None:
        delta = None
        chain: list[int] = [run]
        if level != "full":
            chain = [*self.backups[base][2], run]
            manifests = [self.backups[each][1] for each in chain[:-1]]
            delta = Delta(level=level, base=base, full=chain[0], tree=compose(manifests))
        result = run_backup(
            BackupRequest(
                kind="directory",
                location=str(self.tree),
                dest_dir=self.folder,
                stem=f"20260101T0000{run:02d}Z-{run}",
                manifest_header={"run": run, "source": SOURCE},
                delta=delta,
            ),
            RecordingHooks(),
        )
        self.backups[run] = (result, load_manifest(result.manifest), chain)
        self.expected[run] = snapshot(self.tree)

    def requests(self, run: int, target: Path, **options) -> list[RestoreRequest]:
        return [
            RestoreRequest(
                archive=self.backups[each][0].archive,
                manifest=self.backups[each][0].manifest,
                kind="directory",
                target=str(target),
                **options,
            )
            for each in self.backups[run][2]
        ]


def touch_later(path: Path) -> None:
    """Move a changed entry's mtime on, as a later second would."""
    info = os.lstat(path)
    os.utime(path, (info.st_mtime + 5, info.st_mtime + 5), follow_symlinks=False)


@pytest.fixture
def history(tree, tmp_path) -> History:
    """A full, two incrementals, a differential and an incremental on it, with every change."""
    story = History(tree, tmp_path / "archives")
    story.take(1)
    (tree / "sub" / "text.txt").write_bytes(b"rewritten\n")
    (tree / "newdir").mkdir()
    (tree / "newdir" / "a.txt").write_bytes(b"a\n")
    (tree / "b511.bin").unlink()
    (tree / "empty").rmdir()
    (tree / "run.sh").chmod(0o700)
    story.take(2, "incremental", 1)
    (tree / "link").unlink()
    os.symlink("b512.bin", tree / "link")
    (tree / "sub" / "nested-empty").rmdir()
    (tree / "newdir" / "b.txt").write_bytes(b"b\n")
    with open(tree / "small.txt", "ab") as handle:
        handle.write(b"appended through the hard link's twin\n")
    story.take(3, "incremental", 2)
    (tree / "newdir" / "a.txt").rename(tree / "newdir" / "renamed.txt")
    story.take(4, "differential", 1)
    (tree / "sub" / "random.bin").write_bytes(b"shrunk")
    touch_later(tree / "sub" / "random.bin")
    story.take(5, "incremental", 4)
    return story


@pytest.mark.parametrize("run", [1, 2, 3, 4, 5])
def test_every_point_restores_to_the_tree_as_it_was(history, tmp_path, run):
    target = tmp_path / f"restored-{run}"

    result = restore_chain(history.requests(run, target), RecordingHooks())

    assert snapshot(target) == history.expected[run]
    assert all(check["ok"] for check in result.checks)


def test_an_archive_that_holds_nothing_wanted_is_not_read(history, tmp_path):
    # Run 5 changed one file only: restoring anything else never opens its archive.
    history.backups[5][0].archive.write_bytes(b"damaged")
    target = tmp_path / "restored"

    restore_chain(history.requests(5, target, paths=["newdir"]), RecordingHooks())

    assert sorted(os.listdir(target / "newdir")) == ["b.txt", "renamed.txt"]
    with pytest.raises(ArchiveError):
        restore_chain(history.requests(5, tmp_path / "whole"), RecordingHooks())
    assert not (tmp_path / "whole").exists()


def test_a_path_restore_takes_each_file_from_the_archive_holding_its_last_version(
    history, tmp_path
):
    target = tmp_path / "restored"

    restore_chain(history.requests(3, target, paths=["sub", "small.txt"]), RecordingHooks())

    expected = {
        path: value
        for path, value in history.expected[3].items()
        if path == "sub" or path.startswith("sub/") or path == "small.txt"
    }
    got = snapshot(target)
    assert {p: v[:4] for p, v in got.items()} == {p: v[:4] for p, v in expected.items()}


def test_a_whole_restore_in_place_puts_the_point_back(history, tmp_path):
    (history.tree / "stray.txt").write_bytes(b"written after the backups\n")

    restore_chain(history.requests(3, history.tree, in_place=True), RecordingHooks())

    assert snapshot(history.tree) == history.expected[3]


def test_a_damaged_earlier_archive_fails_the_restore_and_leaves_nothing(history, tmp_path):
    full = history.backups[1][0].archive
    full.write_bytes(full.read_bytes()[:-10] + b"0123456789")
    target = tmp_path / "restored"

    with pytest.raises(ArchiveError):
        restore_chain(history.requests(3, target), RecordingHooks())
    assert not target.exists()


def test_some_paths_restore_in_place_and_leave_the_rest_as_it_is(history):
    (history.tree / "sub" / "text.txt").write_bytes(b"changed after the backups\n")
    (history.tree / "small.txt").write_bytes(b"left alone\n")

    restore_chain(history.requests(3, history.tree, in_place=True, paths=["sub"]), RecordingHooks())

    now = snapshot(history.tree)
    assert {p: v for p, v in now.items() if p.startswith("sub")} == {
        p: v for p, v in history.expected[3].items() if p.startswith("sub")
    }
    assert (history.tree / "small.txt").read_bytes() == b"left alone\n"


def without_folder_times(tree: dict) -> dict:
    return {p: v[:2] if v[0] == "dir" else v for p, v in tree.items()}


@pytest.mark.parametrize("run", [3, 5])
def test_plain_tools_restore_a_chain_exactly_as_we_do(history, tmp_path, run):
    ours = tmp_path / "ours"
    restore_chain(history.requests(run, ours), RecordingHooks())
    plain = tmp_path / "plain"
    manifest = history.backups[run][0].manifest

    done = subprocess.run(
        ["sh", str(SCRIPT), str(history.folder), str(manifest), str(plain)],
        capture_output=True,
        env={"PATH": os.environ["PATH"], "LC_ALL": "C"},
    )

    assert done.returncode == 0, done.stderr
    # Plain tar leaves a folder's mtime at the moment a later archive wrote into it; the
    # file bytes, modes, mtimes, links and hard links are the same.
    assert without_folder_times(snapshot(plain)) == without_folder_times(snapshot(ours))
    assert snapshot(ours) == history.expected[run]


def test_plain_tools_refuse_a_chain_with_a_damaged_archive(history, tmp_path):
    full = history.backups[1][0].archive
    full.write_bytes(full.read_bytes()[:-10] + b"0123456789")

    done = subprocess.run(
        ["sh", str(SCRIPT), str(history.folder), str(history.backups[3][0].manifest), "x"],
        capture_output=True,
        cwd=tmp_path,
    )

    assert done.returncode != 0 and not (tmp_path / "x").exists()


def test_verify_names_a_missing_archive_of_the_chain(history):
    archives = [history.backups[run][0].archive for run in (1, 2)]
    assert verify_chain(archives=archives, hooks=RecordingHooks())["ok"]

    archives[0].unlink()
    outcome = verify_chain(archives=archives, hooks=RecordingHooks())

    assert not outcome["ok"] and "is missing" in outcome["detail"]
    assert "take a full backup" in outcome["detail"]


def test_a_drill_of_an_incremental_restores_its_whole_chain(history, tmp_path):
    requests = history.requests(3, "")
    point = requests[-1]

    outcome = restore_drill(
        archive=point.archive,
        manifest=point.manifest,
        kind="directory",
        scratch_dir=tmp_path / "drills",
        hooks=RecordingHooks(),
        chain=requests[:-1],
    )

    assert outcome["ok"], outcome["detail"]
    assert "chain of 3 archives" in outcome["detail"]
    tree = compose([history.backups[run][1] for run in (1, 2, 3)])
    files = sum(1 for entry in tree.values() if entry.type == "file")
    assert f"Restored {files} files" in outcome["detail"]
