"""A scheduled policy with levels, run by a real cluster: each slot takes the level due.

The policy is made with the CLI (`--schedule`, `--full-every 7d --differential-every 1d`),
so the source gets its django-q2 schedule; each slot is fired by a pass of django-q2's own
scheduler (tests/fleet_helpers.py), and a real `qcluster` on Redis runs the scheduled task
and the backup, choosing its level. Days cannot pass in a test: between slots the catalog
is moved back by the time that would have passed (every run's times), and the source
changes (a file added, one changed, one deleted...). A copy of the tree is kept at each
slot, and every backup restored at the end must give that copy back exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from tests.engine.restore_helpers import snapshot
from tests.fleet_helpers import (
    SCHEDULER_PASS,
    archives_of,
    assert_never_overlapping,
    fleet_world,
    redis_flushed,
    runs_by_source,
    wait_for_backups,
)

REDIS_URL = "redis://127.0.0.1:6379/14"
SOURCE = "files"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HOUR, DAY, MINUTE = timedelta(hours=1), timedelta(days=1), timedelta(minutes=1)


def _write(path: Path, data: bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)


def _first(root: Path) -> None:
    _write(root / "a.txt", b"alpha\n" * 200)
    _write(root / "run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    _write(root / "sub" / "b.bin", os.urandom(64 << 10))
    _write(root / "sub" / "deep" / "c.txt", b"gamma\n" * 50, 0o600)
    (root / "link").symlink_to("a.txt")
    (root / "empty").mkdir()


def _second(root: Path) -> None:
    _write(root / "new.txt", b"new\n")
    _write(root / "a.txt", (root / "a.txt").read_bytes() + b"more\n")
    (root / "sub" / "b.bin").unlink()


def _third(root: Path) -> None:
    (root / "run.sh").chmod(0o700)  # the mode alone changes
    _write(root / "sub" / "deep" / "d.txt", b"delta\n")
    (root / "new.txt").unlink()


def _fourth(root: Path) -> None:
    _write(root / "sub" / "deep" / "c.txt", b"GAMMA\n" * 50)  # same size, other bytes
    _write(root / "e.txt", b"epsilon\n")
    (root / "link").unlink()


def _fifth(root: Path) -> None:
    shutil.rmtree(root / "sub" / "deep")
    _write(root / "e.txt", b"epsilon, longer\n")
    (root / "link2").symlink_to("e.txt")


def _sixth(root: Path) -> None:
    _write(root / "new.txt", b"new again\n")  # a name deleted two slots ago
    _write(root / "run.sh", b"#!/bin/sh\necho bye\n")
    (root / "empty").rmdir()


def _seventh(root: Path) -> None:
    _write(root / "f.bin", os.urandom(32 << 10))
    _write(root / "a.txt", b"alpha, anew\n")
    (root / "e.txt").unlink()


def _eighth(root: Path) -> None:
    _write(root / "f.bin", os.urandom(32 << 10))
    _write(root / "sub" / "g.txt", b"gee\n")
    (root / "sub").chmod(0o750)
    (root / "a.txt").unlink()


# Each slot: how long after the slot before it comes, what changed in the source since,
# the level the policy must take and the slot (index) of its base.
SLOTS = [
    (None, _first, "full", None),
    (6 * HOUR, _second, "incremental", 0),
    (6 * HOUR, _third, "incremental", 1),
    # Three minutes short of a day after the full: a slot that comes a little early is
    # still the daily differential's (the slack in services/levels.py).
    (12 * HOUR - 3 * MINUTE, _fourth, "differential", 0),
    (6 * HOUR, _fifth, "incremental", 3),
    # The full is 6 days 23 hours old: not yet due; a differential is.
    (5 * DAY + 17 * HOUR, _sixth, "differential", 0),
    # The full is three minutes short of 7 days old: the weekly full, with the same slack.
    (HOUR, _seventh, "full", None),
    (6 * HOUR, _eighth, "incremental", 6),
]

# Every run happened `seconds` earlier than the catalog says: the days between two slots.
BACKDATE = """
from datetime import timedelta
from django.db.models import F
from backups.models import Run
gap = timedelta(seconds={seconds})
Run.objects.update(
    queued_at=F("queued_at") - gap, started_at=F("started_at") - gap,
    finished_at=F("finished_at") - gap, heartbeat_at=F("heartbeat_at") - gap,
)
"""

SOURCE_PAGE = """
from django.contrib.auth import get_user_model
from django.test import Client
from backups.models import Source
user = get_user_model().objects.create_superuser("root", password="pw")
client = Client(HTTP_HOST="localhost")
client.force_login(user)
response = client.get(f"/sources/{Source.objects.get(name=%r).slug}/")
print(json.dumps({"status": response.status_code, "page": response.content.decode()}))
"""


@pytest.fixture
def redis_db():
    yield from redis_flushed(REDIS_URL)


@pytest.fixture
def world(tmp_path, redis_db):
    yield from fleet_world(tmp_path, redis_db)


def _changed_files(before: dict, after: dict) -> int:
    """Count the regular files of `after` that are new or different since `before`."""
    return sum(
        1 for path, entry in after.items() if entry[0] == "file" and before.get(path) != entry
    )


def _levels_on_the_page(page: str) -> dict[int, str]:
    """Return the Level column of the source page's restore points, by backup id, as text."""
    points = page[page.index('id="points-title"') : page.index('id="charts-title"')]
    rows = re.findall(
        r'<a href="/runs/(\d+)/">#\1</a>.*?<td data-label="Level">(.*?)</td>', points, re.S
    )
    return {int(run_id): " ".join(re.sub(r"<[^>]+>", "", cell).split()) for run_id, cell in rows}


def test_a_scheduled_policy_takes_the_level_due_at_each_slot_and_each_restores_its_tree(
    world, tmp_path
):
    data = tmp_path / "data" / SOURCE
    data.mkdir(parents=True)
    made = world.manage(
        "policy", "add", "levels", "--schedule", "0 0 1 1 *", "--keep-last", "50",
        "--full-every", "7d", "--differential-every", "1d", "--no-verify",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    made = world.manage(
        "source", "add", SOURCE, "--kind=directory", f"--location={data}", "--policy=levels"
    )
    assert made.returncode == 0, made.stderr
    world.cluster()

    snapshots, tasks = [], set()
    for slot, (gap, change, _level, _base) in enumerate(SLOTS, start=1):
        change(data)
        copy = tmp_path / "snapshots" / str(slot)
        shutil.copytree(data, copy, symlinks=True)
        snapshots.append(snapshot(copy))
        backdate = BACKDATE.format(seconds=gap.total_seconds()) if gap else ""
        fired = json.loads(world.python(backdate + SCHEDULER_PASS))
        assert list(fired) == [f"backup {SOURCE}"]
        schedule = fired[f"backup {SOURCE}"]
        assert schedule["task"] not in tasks and not schedule["due"], "the slot fired once"
        tasks.add(schedule["task"])
        runs = wait_for_backups(world, [SOURCE], slot, timeout=60)[SOURCE]
        assert len(runs) == slot, f"slot {slot} made {len(runs) - slot + 1} backups"

    # Each slot made one backup, at the level due, on the right base.
    assert [run["trigger"] for run in runs] == ["schedule"] * len(SLOTS)
    assert [run["status"] for run in runs] == ["succeeded"] * len(SLOTS)
    ids = [run["id"] for run in runs]
    chains = []
    for _gap, _change, level, base in SLOTS:
        if base is None:
            chains.append({"level": level, "base": None, "full": None})
        else:
            full = chains[base]["full"] or ids[base]
            chains.append({"level": level, "base": ids[base], "full": full})
    assert [run["chain"] for run in runs] == chains
    assert_never_overlapping({SOURCE: runs})

    # Each delta holds what changed since its base, and only that: a real delta.
    payload = dict(world.query("SELECT id, payload_files FROM backups_run WHERE kind = 'backup'"))
    for index, (_gap, _change, _level, base) in enumerate(SLOTS):
        before = {} if base is None else snapshots[base]
        assert payload[ids[index]] == _changed_files(before, snapshots[index]), f"slot {index + 1}"
        assert archives_of(world, SOURCE, ids[index]) == 1

    # Every backup gives back the tree as it was at its slot: names, bytes, modes, links.
    (tmp_path / "restores").mkdir()
    targets = {run_id: tmp_path / "restores" / str(run_id) for run_id in ids}
    for run_id, target in targets.items():
        restored = world.manage("restore", str(run_id), "--to", str(target), "--inline", "--json")
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["status"] == "succeeded"
    for index, run_id in enumerate(ids):
        assert snapshot(targets[run_id]) == snapshots[index], f"slot {index + 1}"

    # The source page shows each backup's level and its chain.
    shown = json.loads(world.python(SOURCE_PAGE % SOURCE))
    assert shown["status"] == 200
    assert "a full every 7d, a differential every 1d, incremental otherwise" in shown["page"]
    expected_levels = {}
    for run_id, chain in zip(ids, chains, strict=True):
        text = chain["level"]
        if chain["base"] is not None:
            text += f" on #{chain['base']}"
            if chain["full"] != chain["base"]:
                text += f", chain of full #{chain['full']}"
        expected_levels[run_id] = text
    assert _levels_on_the_page(shown["page"]) == expected_levels

    # Nothing ran twice, nor late: one scheduled task and one backup per slot, no miss.
    done = world.query(
        "SELECT COUNT(*) FROM django_q_task WHERE func = %s", ("backups.tasks.scheduled_backup",)
    )
    assert done == [(len(SLOTS),)]
    assert world.query("SELECT COUNT(*) FROM backups_schedulemiss") == [(0,)]
    assert len(runs_by_source(world, [SOURCE])[SOURCE]) == len(SLOTS)
