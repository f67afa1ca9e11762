"""Worker hosts for the fleet tests: real clusters, each with a host name of its own.

Each host is a real `qcluster` in a UTS namespace of its own (`unshare --uts`), so it has
its own host name, as a second machine would: a run's owner on the other host can only be
judged by its heartbeat. Slots are fired the way the scheduler fires them (the scheduled
backup task of every source), or by a pass of django-q2's own scheduler over schedules
made due (`SCHEDULER_PASS`); housekeeping, a minutely django-q schedule in production, is
called by the test so that minutes pass in seconds.
"""

from __future__ import annotations

import shutil
import sys

import pytest

from tests.test_workers import _world

needs_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None, reason="needs util-linux's unshare"
)

FIRE_SLOT = """
from backups.models import Source
from backups.services.schedules import backup_scheduled
runs = {}
for source in Source.objects.order_by("name"):
    run = backup_scheduled(source_id=source.pk)
    runs[source.name] = run.pk if run else None
print(json.dumps(runs))
"""

# What the scheduler in a cluster's guard does every 30 s, done now: every backup schedule
# is made due and django-q2's scheduler turns each into a `scheduled_backup` task on the
# broker, and moves the schedule on to its next slot. (The scheduler's transaction is
# exclusive, so a pass of the cluster's own at the same moment cannot fire a slot twice.)
SCHEDULER_PASS = """
from datetime import timedelta
from django.utils import timezone
from django_q.scheduler import scheduler
from backups.services.timetable import backup_schedules
backup_schedules().update(next_run=timezone.now() - timedelta(seconds=1))
scheduler()
print(json.dumps({
    s.name: {"task": s.task, "due": s.next_run <= timezone.now()} for s in backup_schedules()
}))
"""

HOUSEKEEPING = """
from backups.tasks import housekeeping
print(json.dumps(housekeeping()))
"""


def redis_flushed(url: str):
    """Yield `url` with its Redis database emptied before and after."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def fleet_world(tmp_path, redis_url: str, **env):
    """Yield a world whose clusters use the Redis broker at `redis_url`."""
    for world in _world(tmp_path):
        world.env.update(REDIS_URL=redis_url, QUEUE_RESEND_AFTER_S="10", **env)
        yield world


def host(world, name: str, **env):
    """Start a worker cluster as the host `name`: its own host name, its own process group."""
    script = f"hostname {name} && exec {sys.executable} manage.py qcluster"
    return world.spawn(["unshare", "--uts", "sh", "-c", script], name, **env)


def runs_by_source(world, sources) -> dict[str, list[dict]]:
    """Return the backup runs of each of `sources`, oldest first."""
    rows = world.query(
        "SELECT s.name, r.id, r.status, r.started_at, r.finished_at, r.worker_host, r.trigger, "
        "r.level, r.base_id, r.full_id FROM backups_run r "
        "JOIN backups_source s ON s.id = r.source_id WHERE r.kind = 'backup' ORDER BY r.id"
    )
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    for name, run_id, status, started, finished, worker_host, trigger, *chain in rows:
        runs[name].append(
            {
                "id": run_id,
                "status": status,
                "span": (started, finished),
                "host": worker_host,
                "trigger": trigger,
                "chain": dict(zip(("level", "base", "full"), chain, strict=True)),
            }
        )
    return runs


def archives_of(world, name: str, run_id: int) -> int:
    """Return how many archives of backup `run_id` source `name`'s folder holds."""
    return len(list((world.archives / name).glob(f"*-{run_id}.tar.zst")))


def assert_never_overlapping(runs: dict[str, list[dict]]) -> None:
    """Fail when two backups of one source ran at the same time."""
    for name, source_runs in runs.items():
        spans = sorted(run["span"] for run in source_runs if run["span"][0] is not None)
        for (_start, end), (next_start, _end) in zip(spans, spans[1:], strict=False):
            assert next_start >= end, f"{name}: overlapping runs {spans}"


def wait_for_backups(world, sources, count: int, timeout: float, housekeeping: bool = False):
    """Wait until every source has `count` succeeded backups and nothing is active."""

    def done():
        if housekeeping:
            world.python(HOUSEKEEPING)
        runs = runs_by_source(world, sources)
        settled = all(
            sum(run["status"] == "succeeded" for run in source_runs) >= count
            and not any(run["status"] in ("queued", "running") for run in source_runs)
            for source_runs in runs.values()
        )
        return runs if settled else None

    return world.wait_until(f"{count} backup(s) of every source", done, timeout=timeout)
