"""Restore journals are read only from the workers' private state folder, never from data."""

import json
import os

import pytest

from backups.models import Run
from backups.services.runs import reap_abandoned
from backups.services.schedules import housekeeping_run
from tests.cli_helpers import call_json

pytestmark = pytest.mark.django_db(transaction=True)


def tree(root):
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def victim(tmp_path):
    """A folder that has nothing to do with any restore."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "precious.txt").write_text("not yours to delete")
    return folder


def crafted_journal(victim) -> str:
    """A journal, as an attacker would write it, that names `victim` as every path."""
    return json.dumps(
        {
            "kind": "tree",
            "phase": "done",
            "target": str(victim),
            "staging": str(victim),
            "aside": str(victim),
            "before": "dir",
        }
    )


@pytest.mark.parametrize("where", ["in the backed-up folder", "beside it"])
def test_a_journal_planted_in_the_data_does_not_steer_an_in_place_restore(
    source, data_dir, victim, where
):
    # An upload lands in the backed-up folder (or a neighbour writes beside it).
    home = data_dir if where == "in the backed-up folder" else data_dir.parent
    (home / ".restore-deadbeef.journal").write_text(crafted_journal(victim))
    (home / ".uploads.restore-0123abcd.journal").write_text(crafted_journal(victim))
    backup = call_json("backup", source.name, "--inline")
    (data_dir / "a.txt").write_text("damaged")

    run = call_json("restore", str(backup["id"]), "--in-place", "--yes", "--inline")

    assert run["status"] == "succeeded", run["error"]
    assert tree(victim) == {"precious.txt": b"not yours to delete"}
    assert (data_dir / "a.txt").read_text() == "alpha\n"


def test_housekeeping_ignores_journals_planted_beside_a_restore_target(
    source, data_dir, victim, tmp_path
):
    (data_dir.parent / ".data.restore-0123456789ab.journal").write_text(crafted_journal(victim))
    dead = Run.objects.create(
        source=source, kind=Run.Kind.RESTORE, target=str(data_dir), in_place=True
    )
    Run.objects.filter(pk=dead.pk).update(
        status=Run.Status.RUNNING, worker="gone:1:x", heartbeat_at="2000-01-01T00:00:00Z"
    )

    assert reap_abandoned() == [dead.pk]

    assert tree(victim) == {"precious.txt": b"not yours to delete"}
    assert os.path.exists(data_dir.parent / ".data.restore-0123456789ab.journal")


def test_housekeeping_refuses_a_journal_whose_paths_are_not_its_target_s(
    source, data_dir, victim, settings, caplog
):
    # Even in the private state folder, a journal decides nothing beyond its own target.
    settings.STATE_DIR.mkdir(mode=0o700)
    token = "0123456789ab"
    record = {
        "run": "41",
        "token": token,
        "kind": "tree",
        "phase": "done",
        "target": str(data_dir),
        "layout": "beside",
        "staging": str(victim),
        "aside": str(victim),
        "before": "dir",
    }
    journal = settings.STATE_DIR / f"restore-41.{token}.journal"
    journal.write_text(json.dumps(record))

    housekeeping_run()

    assert tree(victim) == {"precious.txt": b"not yours to delete"}
    assert journal.exists()
    assert f"Refused the restore journal {journal}" in caplog.text
    assert "not the ones its target and token give" in caplog.text
