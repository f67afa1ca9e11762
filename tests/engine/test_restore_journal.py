"""Restore journals: kept in a private state folder, bound to their run, target and token."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from backups.engine.errors import StateFolderError
from backups.engine.hooks import RecordingHooks
from backups.engine.restore import RestoreRequest, recover_interrupted, restore_archive
from backups.engine.restore.journal import journal_paths
from tests.engine.restore_helpers import archive_of, make_tree, snapshot

TOKEN = "0123456789ab"


@pytest.fixture
def victim(tmp_path):
    """A folder no restore has any business touching."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    return folder


@pytest.fixture
def state(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    return folder


def well_formed(target: Path, **changes) -> dict:
    """Return the record a tree restore of `target` in place writes while swapping."""
    staging, aside = journal_paths(target, TOKEN)
    return {
        "run": "5",
        "token": TOKEN,
        "kind": "tree",
        "phase": "swapping",
        "target": str(target),
        "layout": "beside",
        "staging": str(staging),
        "aside": str(aside),
        "before": "dir",
        **changes,
    }


def plant(state: Path, record: dict, name: str = f"restore-5.{TOKEN}.journal") -> Path:
    path = state / name
    path.write_text(json.dumps(record))
    return path


def request_for(backup, target, state_dir, **options):
    return RestoreRequest(
        archive=backup.archive,
        manifest=backup.manifest,
        kind="directory",
        target=str(target),
        in_place=True,
        state_dir=state_dir,
        run_id="9",
        **options,
    )


def test_a_well_formed_journal_puts_the_original_back(tmp_path, state):
    target = tmp_path / "data"
    _, aside = journal_paths(target, TOKEN)
    aside.mkdir()
    (aside / "original.txt").write_text("original")
    journal = plant(state, well_formed(target))

    done = recover_interrupted(state)

    assert done[0] == f"Put the original data back at {target}."
    assert (target / "original.txt").read_text() == "original"
    assert not journal.exists()


@pytest.mark.parametrize(
    "crafted",
    [
        pytest.param(lambda victim: {"staging": str(victim)}, id="staging elsewhere"),
        pytest.param(lambda victim: {"aside": str(victim)}, id="aside elsewhere"),
        pytest.param(lambda victim: {"phase": "done", "aside": str(victim)}, id="done, aside"),
        pytest.param(lambda victim: {"run": "6"}, id="another run than its name"),
        pytest.param(lambda victim: {"token": "ba9876543210"}, id="another token"),
        pytest.param(lambda victim: {"layout": "inside"}, id="inside a tree restore"),
        pytest.param(lambda victim: {"kind": "scratch", "staging": str(victim)}, id="old kind"),
        pytest.param(
            lambda victim: {
                "kind": "paths",
                "items": [{"path": "../victim", "existed": False, "moved_in": True}],
                "created": [],
            },
            id="a path above the target",
        ),
        pytest.param(
            lambda victim: {"kind": "paths", "items": [], "created": ["../victim"]},
            id="a created folder above the target",
        ),
    ],
)
def test_a_journal_not_bound_to_its_target_and_token_is_refused(tmp_path, state, victim, crafted):
    target = tmp_path / "data"
    target.mkdir()
    (target / "live.txt").write_text("live")
    journal = plant(state, well_formed(target, **crafted(victim)))
    hooks = RecordingHooks()

    done = recover_interrupted(state, hooks=hooks)

    assert len(done) == 1 and done[0].startswith(f"Refused the restore journal {journal}: ")
    assert hooks.lines == done
    assert (victim / "precious.txt").read_text() == "keep me"
    assert (target / "live.txt").read_text() == "live"
    assert journal.exists(), "a refused journal is left for a person to look at"


@pytest.mark.parametrize("where", ["target", "parent"])
def test_a_restore_reads_no_journal_beside_or_inside_its_target(tmp_path, state, victim, where):
    source = make_tree(tmp_path / "data")
    backup = archive_of(source, tmp_path / "archives")
    home = source if where == "target" else source.parent
    planted = well_formed(source, phase="done", staging=str(victim), aside=str(victim))
    for name in (".restore-deadbeef.journal", f"restore-5.{TOKEN}.journal"):
        (home / name).write_text(json.dumps(planted))

    restore_archive(request_for(backup, source, state), RecordingHooks())

    assert (victim / "precious.txt").read_text() == "keep me"


def test_the_state_folder_is_created_private(tmp_path):
    source = make_tree(tmp_path / "data")
    backup = archive_of(source, tmp_path / "archives")
    state = tmp_path / "var" / "state"

    restore_archive(request_for(backup, source, state), RecordingHooks())

    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert os.listdir(state) == []  # the journal is gone once the restore succeeded


def test_a_state_folder_others_may_write_is_neither_used_nor_read(tmp_path, state, victim):
    source = make_tree(tmp_path / "data")
    before = snapshot(source)
    backup = archive_of(source, tmp_path / "archives")
    os.chmod(state, 0o777)
    planted = plant(state, well_formed(source))

    with pytest.raises(StateFolderError, match="chmod 700"):
        restore_archive(request_for(backup, source, state), RecordingHooks())
    done = recover_interrupted(state)

    assert snapshot(source) == before
    assert len(done) == 1 and "may be written by other users (mode 777)" in done[0]
    assert planted.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder away needs root")
def test_a_state_folder_of_another_user_is_refused(tmp_path, state):
    source = make_tree(tmp_path / "data")
    backup = archive_of(source, tmp_path / "archives")
    os.chown(state, 65534, 65534)

    with pytest.raises(StateFolderError, match="belongs to uid 65534"):
        restore_archive(request_for(backup, source, state), RecordingHooks())
