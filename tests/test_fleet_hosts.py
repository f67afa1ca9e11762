"""Two worker hosts sharing one database, one Redis and one archive folder.

Each host is a real `qcluster` with a host name of its own (see tests/fleet_helpers.py):
a run's owner on the other host can only be judged by its heartbeat.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.fleet_helpers import (
    FIRE_SLOT,
    archives_of,
    assert_never_overlapping,
    fleet_world,
    host,
    needs_unshare,
    redis_flushed,
)
from tests.fleet_helpers import wait_for_backups as _wait_for_backups
from tests.test_workers import _group

REDIS_URL = "redis://127.0.0.1:6379/12"
SOURCES = [f"s{index}" for index in range(6)]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), needs_unshare]


@pytest.fixture
def redis_db():
    yield from redis_flushed(REDIS_URL)


@pytest.fixture
def world(tmp_path, redis_db):
    yield from fleet_world(tmp_path, redis_db)


def fleet(world, megabytes: int) -> None:
    """Create the sources: pods slow enough to be caught in the middle of a backup."""
    locations = {name: world.pod("shop", name, megabytes=megabytes) for name in SOURCES}
    world.python(f"""
        from backups.services.catalog import policy_create, source_create
        # Scheduled (so its slots count), but never due by itself during the test.
        policy = policy_create(
            name="p", schedule="0 0 1 1 *", keep_last=50, verify_after_backup=False
        )
        for name, location in {locations!r}.items():
            source_create(name=name, kind="kubernetes", location=location, policy=policy)
    """)


def assert_once_and_never_overlapping(world, runs: dict[str, list[dict]]) -> None:
    for name, source_runs in runs.items():
        for run in source_runs:
            # Executed once: a second execution would have found its archive there.
            expected = 1 if run["status"] == "succeeded" else 0
            assert archives_of(world, name, run["id"]) == expected, (name, run)
    assert_never_overlapping(runs)


def wait_for_backups(world, count: int, timeout: float, housekeeping: bool = False):
    """Wait until every source has `count` succeeded backups and nothing is active."""
    return _wait_for_backups(world, SOURCES, count, timeout, housekeeping)


def test_two_hosts_run_each_slot_once_and_never_two_backups_of_a_source_at_a_time(world):
    fleet(world, megabytes=1)
    host(world, "host-a")
    host(world, "host-b")
    for slot in range(1, 4):
        fired = json.loads(world.python(FIRE_SLOT))
        assert all(fired.values()), f"slot {slot} found a source still busy: {fired}"
        runs = wait_for_backups(world, slot, timeout=60)
    assert {name: len(source_runs) for name, source_runs in runs.items()} == dict.fromkeys(
        SOURCES, 3
    )
    assert_once_and_never_overlapping(world, runs)
    hosts = {run["host"] for source_runs in runs.values() for run in source_runs}
    assert hosts == {"host-a", "host-b"}, "both hosts took work"


def test_a_host_lost_right_after_taking_a_slots_tasks_loses_no_backup(world):
    fleet(world, megabytes=2)
    lost = host(world, "host-a", SLOW_KUBECTL_BPS=400_000)
    json.loads(world.python(FIRE_SLOT))

    def taken():
        # Its workers run two backups and its buffer holds the next ones (queue_limit).
        running = world.query("SELECT COUNT(*) FROM backups_run WHERE status = 'running'")
        return running[0][0] >= 2

    world.wait_until("host-a to be running backups", taken, timeout=30)
    os.killpg(lost.pid, signal.SIGKILL)  # the host is gone, with its buffered tasks
    lost.wait(timeout=10)
    host(world, "host-b")

    # Housekeeping re-sends the tasks that died with host-a, declares its two runs
    # abandoned once their heartbeat is older than ABANDON_AFTER_S, and hands their slots
    # over: within a minute here (ABANDON_AFTER_S 10 s, QUEUE_RESEND_AFTER_S 10 s), within
    # three with the production settings.
    runs = wait_for_backups(world, 1, timeout=120, housekeeping=True)
    assert_once_and_never_overlapping(world, runs)
    abandoned = [run for rs in runs.values() for run in rs if run["status"] == "abandoned"]
    assert len(abandoned) >= 2 and all(run["host"] == "host-a" for run in abandoned)


def test_a_host_stopped_hands_its_running_backups_to_the_other(world):
    fleet(world, megabytes=3)
    stopped = host(world, "host-a", SLOW_KUBECTL_BPS=300_000)
    json.loads(world.python(FIRE_SLOT))
    world.wait_until(
        "host-a to be running backups",
        lambda: world.query("SELECT COUNT(*) FROM backups_run WHERE status = 'running'")[0][0] >= 2,
        timeout=30,
    )
    host(world, "host-b")

    # What systemd does to stop the host's service: SIGTERM to every process at once.
    os.killpg(stopped.pid, signal.SIGTERM)
    world.wait_until("host-a's processes to exit", lambda: not _group(stopped.pid), timeout=20)

    runs = wait_for_backups(world, 1, timeout=120, housekeeping=True)
    assert_once_and_never_overlapping(world, runs)
    cancelled = [run for rs in runs.values() for run in rs if run["status"] == "cancelled"]
    assert cancelled and all(run["host"] == "host-a" for run in cancelled)
    for name, source_runs in runs.items():
        succeeded = [run for run in source_runs if run["status"] == "succeeded"]
        assert len(succeeded) == 1, (name, source_runs)
