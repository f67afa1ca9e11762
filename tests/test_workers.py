"""Real worker clusters: kills, pauses, schedules and two clusters on Redis.

Every test here runs `manage.py qcluster` (or another command) as a real process against a
database of its own (a SQLite file, or a fresh PostgreSQL database when DATABASE_URL points
at PostgreSQL), so the processes see each other's commits exactly as workers on several
hosts would. The test reads the outcome from the Run table with plain SQL, the way an
operator's query would, and waits on it with a deadline.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_KUBECTL = Path(__file__).resolve().parent / "engine" / "fake_kubectl" / "kubectl"
REDIS_URL = "redis://127.0.0.1:6379/13"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ABANDON_AFTER_S = 10

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

PRELUDE = """\
import json, os, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django.setup()
"""

# The stand-in kubectl, with its output throttled: a pod on a slow link, so that a backup
# is still writing when the test kills or pauses its worker.
SLOW_KUBECTL = """\
#!{python}
import os, subprocess, sys, time
rate = int(os.environ.get("SLOW_KUBECTL_BPS") or 0)
child = subprocess.Popen([sys.executable, {fake!r}, *sys.argv[1:]], stdout=subprocess.PIPE)
out = sys.stdout.buffer
while True:
    data = child.stdout.read1(8192)
    if not data:
        break
    out.write(data)
    out.flush()
    if rate:
        time.sleep(len(data) / rate)
sys.exit(child.wait())
"""

RUN_COLUMNS = (
    "id",
    "kind",
    "status",
    "trigger",
    "queued_at",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "bytes_done",
    "archive",
    "error",
    "worker",
    "log",
    "keep",
)


def _moment(value):
    if value is None or isinstance(value, datetime):
        return value.astimezone(UTC) if value else None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class World:
    """A database, an archive folder and the processes that share them."""

    def __init__(self, root: Path, database_url: str) -> None:
        self.root = root
        self.archives = root / "archives"
        self.pods = root / "pods"
        self.database_url = database_url
        self.processes: list[subprocess.Popen] = []
        bin_dir = root / "bin"
        bin_dir.mkdir()
        kubectl = bin_dir / "kubectl"
        kubectl.write_text(SLOW_KUBECTL.format(python=sys.executable, fake=str(FAKE_KUBECTL)))
        kubectl.chmod(0o755)
        env = {
            k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_SETTINGS_MODULE")
        }
        self.env = {
            **env,
            "DATABASE_URL": database_url,
            "ARCHIVE_ROOT": str(self.archives),
            "ABANDON_AFTER_S": str(ABANDON_AFTER_S),
            "HEARTBEAT_INTERVAL_S": "1",
            "Q_WORKERS": "2",
            "LOG_LEVEL": "INFO",
            "Q_LOG_LEVEL": "INFO",
            "FAKE_KUBECTL_ROOT": str(self.pods),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # Processes ---------------------------------------------------------------------------

    def _env(self, extra: dict) -> dict:
        return {**self.env, **{k: str(v) for k, v in extra.items()}}

    def python(self, code: str, **env) -> str:
        """Run Django code in a fresh process of this world; return its stdout."""
        result = subprocess.run(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
            cwd=ROOT,
            env=self._env(env),
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def manage(self, *args, **env) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self._env(env),
            capture_output=True,
            text=True,
            timeout=90,
        )

    def spawn(self, argv: list[str], name: str, **env) -> subprocess.Popen:
        """Start a process in its own process group, its output in `<name>.log`."""
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the world
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self._env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process.log = log
        process.name = name
        self.processes.append(process)
        return process

    def cluster(self, name: str = "cluster", **env) -> subprocess.Popen:
        return self.spawn([sys.executable, "manage.py", "qcluster"], name, **env)

    def signal(self, process: subprocess.Popen, sig: int) -> None:
        """Send `sig` to the process and all its children (a whole cluster)."""
        os.killpg(process.pid, sig)

    def kill(self, process: subprocess.Popen) -> None:
        self.signal(process, signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        # These worlds are thrown away: no need for a graceful stop.
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            process.log.close()
        # A process killed outright leaves the helpers it started in sessions of their own
        # (this world's stand-in kubectl) to run on: end them too.
        kubectl = str(self.root / "bin" / "kubectl").encode()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and kubectl in (entry / "cmdline").read_bytes():
                    os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)
            except OSError:  # gone meanwhile
                continue

    def logs(self) -> str:
        text = []
        for path in sorted(self.root.glob("*.log")):
            text.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(text)

    def wait_until(self, what: str, predicate, timeout: float = 30):
        """Poll `predicate` until it returns something truthy; fail after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")
            time.sleep(0.2)

    # Data --------------------------------------------------------------------------------

    def query(self, sql: str, params=()) -> list[tuple]:
        url = urlparse(self.database_url)
        if url.scheme == "sqlite":
            with closing(sqlite3.connect(url.path, timeout=30)) as db:
                return db.execute(sql.replace("%s", "?"), params).fetchall()
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as db:
            cursor = db.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def runs(self, source: str, kind: str = "backup") -> list[dict]:
        """Return the runs of `source`, oldest first, as dicts."""
        columns = ", ".join(f"r.{c}" for c in RUN_COLUMNS)
        rows = self.query(
            f"SELECT {columns} FROM backups_run r JOIN backups_source s ON s.id = r.source_id "
            "WHERE s.name = %s AND r.kind = %s ORDER BY r.id",
            (source, kind),
        )
        runs = []
        for row in rows:
            run = dict(zip(RUN_COLUMNS, row, strict=True))
            for key in ("queued_at", "started_at", "finished_at", "heartbeat_at"):
                run[key] = _moment(run[key])
            runs.append(run)
        return runs

    def run(self, run_id: int) -> dict:
        columns = ", ".join(RUN_COLUMNS)
        row = self.query(f"SELECT {columns} FROM backups_run WHERE id = %s", (run_id,))[0]
        run = dict(zip(RUN_COLUMNS, row, strict=True))
        for key in ("queued_at", "started_at", "finished_at", "heartbeat_at"):
            run[key] = _moment(run[key])
        return run

    def pod(self, namespace: str, name: str, megabytes: int) -> str:
        """Create a pod folder with `megabytes` of incompressible files; return its location."""
        data = self.pods / namespace / name / "data"
        data.mkdir(parents=True)
        for index in range(megabytes):
            (data / f"part-{index:03}.bin").write_bytes(os.urandom(1 << 20))
        return f"{namespace}/{name}:/data"

    def folder(self, name: str, files: int = 3) -> str:
        data = self.root / "data" / name
        data.mkdir(parents=True)
        for index in range(files):
            (data / f"file-{index}.txt").write_text(f"{name} {index}\n" * 1000)
        return str(data)


def _database(tmp_path: Path, url: str | None = None):
    """Return a database URL only this test's processes use, and how to drop it.

    On the server of `url` (by default DATABASE_URL), or a SQLite file when that is not
    PostgreSQL.
    """
    url = url or os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return f"sqlite:///{tmp_path / 'workers.sqlite3'}", lambda: None
    import psycopg

    name = f"workers_{secrets.token_hex(4)}"
    admin = urlparse(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')

    def drop():
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urlparse(url)._replace(path=f"/{name}").geturl(), drop


def _world(tmp_path: Path, url: str | None = None):
    url, drop = _database(tmp_path, url)
    world = World(tmp_path, url)
    migrated = world.manage("migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr
    try:
        yield world
    finally:
        world.stop_all()
        drop()


@pytest.fixture
def world(tmp_path):
    yield from _world(tmp_path)


@pytest.fixture
def postgres_world(tmp_path):
    """A world on PostgreSQL whatever DATABASE_URL says: the server CI always has."""
    yield from _world(tmp_path, os.environ.get("TEST_POSTGRES_URL", POSTGRES_URL))


def _temps(folder: Path, run_id: int) -> list[Path]:
    return list(folder.glob(f"*-{run_id}.*.tmp"))


def _files_of(folder: Path, run_id: int) -> list[str]:
    return sorted(p.name for p in folder.glob(f"*-{run_id}.*"))


def _writing(world: World, run_id: int, folder: Path):
    run = world.run(run_id)
    return run["status"] == "running" and run["bytes_done"] > 0 and _temps(folder, run_id)


def _silent_for(world: World, run_id: int, seconds: float) -> bool:
    beat = world.run(run_id)["heartbeat_at"]
    return beat is not None and datetime.now(UTC) - beat > timedelta(seconds=seconds)


def test_a_cluster_killed_mid_backup_leaves_an_abandoned_run_and_the_next_backup_succeeds(
    world,
):
    location = world.pod("shop", "db-0", megabytes=3)
    source_id = int(
        world.python(f"""
            from backups.services.catalog import policy_create, source_create
            policy = policy_create(name="p", schedule="0 0 1 1 *", keep_last=5,
                                   verify_after_backup=False)
            print(source_create(name="shop", kind="kubernetes", location={location!r},
                                policy=policy).pk)
        """)
    )
    queued = world.manage("backup", "shop")
    first = int(queued.stdout)
    folder = world.archives / "shop"
    cluster = world.cluster("first", SLOW_KUBECTL_BPS=150_000)
    world.wait_until("the backup to be writing", lambda: _writing(world, first, folder))

    # A lost host: the whole cluster, master and workers, dies at once.
    world.kill(cluster)
    assert world.run(first)["status"] == "running"
    assert _temps(folder, first), "the killed backup left its temporary file"

    # On the same host the killed worker is seen gone at once: no wait for its heartbeat
    # to go stale.
    world.cluster("second")
    # The next slot: exactly what django-q2's scheduler enqueues for this source.
    world.python(
        f"from django_q.tasks import async_task; "
        f"async_task('backups.tasks.scheduled_backup', {source_id})"
    )
    runs = world.wait_until(
        "the next backup to succeed",
        lambda: (r := world.runs("shop")) and len(r) == 2 and r[1]["status"] == "succeeded" and r,
        timeout=60,
    )
    abandoned, good = runs
    assert abandoned["status"] == "abandoned"
    assert abandoned["error"].startswith("Its process was gone (pid ")
    assert "is no longer running" in abandoned["error"]
    assert abandoned["finished_at"] >= abandoned["started_at"]
    assert good["trigger"] == "schedule"
    assert _files_of(folder, first) == []
    archive = Path(good["archive"])
    assert archive.is_file()
    check = subprocess.run(["sha256sum", "-c", archive.name + ".sha256"], cwd=folder)
    assert check.returncode == 0
    assert not list(folder.glob("*.tmp"))


def test_a_worker_paused_past_its_heartbeat_publishes_nothing_when_it_wakes(world):
    location = world.pod("shop", "db-0", megabytes=3)
    world.python(f"""
        from backups.services.catalog import policy_create, source_create
        policy = policy_create(name="p", keep_last=5, verify_after_backup=False)
        source_create(name="shop", kind="kubernetes", location={location!r}, policy=policy)
    """)
    worker = world.spawn(
        [sys.executable, "manage.py", "backup", "shop", "--inline", "--json"],
        "inline",
        SLOW_KUBECTL_BPS=150_000,
    )
    folder = world.archives / "shop"
    run_id = world.wait_until(
        "the backup to start", lambda: world.runs("shop") and world.runs("shop")[0]["id"]
    )
    world.wait_until("the backup to be writing", lambda: _writing(world, run_id, folder))

    world.signal(worker, signal.SIGSTOP)
    world.wait_until(
        "the paused run's heartbeat to go stale",
        lambda: _silent_for(world, run_id, ABANDON_AFTER_S + 0.5),
    )
    reaped = json.loads(
        world.python(
            "from backups.services.runs import reap_abandoned; print(json.dumps(reap_abandoned()))"
        )
    )
    assert reaped == [run_id]
    assert _temps(folder, run_id) == []
    verdict = world.run(run_id)

    world.signal(worker, signal.SIGCONT)
    assert worker.wait(timeout=60) == 1
    after = world.run(run_id)
    assert after["status"] == "abandoned"
    assert (after["error"], after["finished_at"]) == (verdict["error"], verdict["finished_at"])
    assert after["archive"] == ""
    assert _files_of(folder, run_id) == [], "the woken worker must publish nothing"


PAUSING_PRUNER = """
import signal, sys
from backups.models import Source
from backups.services import prune

claim = prune._claim

def claim_then_pause(runs, me, now):
    result = claim(runs, me, now)
    print("claimed", " ".join(str(run.pk) for run in result[0]), flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    return result

prune._claim = claim_then_pause
print(json.dumps(prune.prune_execute(source=Source.objects.get(name="files"))), flush=True)
"""


def test_a_pruner_paused_past_its_grace_period_deletes_nothing_when_it_wakes(world):
    location = world.folder("files")
    ids = json.loads(
        world.python(f"""
            from datetime import timedelta
            from django.utils import timezone
            from backups.services.catalog import policy_create, source_create
            from tests.prune_helpers import make_backups
            policy = policy_create(name="p", keep_last=2)
            source = source_create(name="files", kind="directory", location={location!r},
                                   policy=policy)
            now = timezone.now()
            runs = make_backups(source, [now - timedelta(hours=h) for h in range(4)])
            print(json.dumps([run.pk for run in runs]))
        """)
    )
    pruner = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + PAUSING_PRUNER],
        cwd=ROOT,
        env=world.env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    world.processes.append(pruner)
    pruner.log = open(os.devnull, "w")  # noqa: SIM115 - closed with the world
    claimed = pruner.stdout.readline().split()
    assert claimed == ["claimed", str(ids[2]), str(ids[3])]
    world.wait_until(
        "the pruner to be stopped",
        lambda: Path(f"/proc/{pruner.pid}/stat").read_text().split(") ")[1][0] == "T",
    )
    paused, other = ids[2], ids[3]
    assert world.run(paused)["status"] == "pruning"
    # While it is away, an operator pins one of the backups it was about to delete.
    world.python(
        f"from backups.models import Run; Run.objects.filter(pk={paused}).update(keep=True)"
    )
    world.wait_until(
        "the pruner's claim to go stale",
        lambda: _silent_for(world, paused, ABANDON_AFTER_S + 0.5),
    )
    finished = json.loads(
        world.python(
            "from backups.services.prune import prune_recover; print(json.dumps(prune_recover()))"
        )
    )
    assert finished == [other]
    assert world.run(paused)["status"] == "succeeded"

    os.killpg(pruner.pid, signal.SIGCONT)
    out, _ = pruner.communicate(timeout=60)
    report = json.loads(out)
    assert report["remove"] == []
    assert "no longer being removed by this pruner" in report["problems"][0]
    folder = world.archives / "files"
    assert len(_files_of(folder, paused)) == 3, "the pinned backup's files must survive"
    assert world.run(paused)["status"] == "succeeded"


def test_a_running_cluster_runs_an_overdue_schedule_once_then_prunes(world):
    location = world.folder("files")
    world.python(f"""
        from datetime import timedelta
        from django.utils import timezone
        from django_q.models import Schedule
        from backups.services.catalog import policy_create, source_create
        policy = policy_create(name="minutely", schedule="* * * * *", keep_last=1,
                               verify_after_backup=False)
        source_create(name="files", kind="directory", location={location!r}, policy=policy)
    """)
    old = world.manage("backup", "files", "--inline", "--json")
    assert old.returncode == 0, old.stderr
    old_id = json.loads(old.stdout)["id"]
    # The workers were down for five minutes: five slots of this schedule went by.
    world.python("""
        from datetime import timedelta
        from django.utils import timezone
        from django_q.models import Schedule
        Schedule.objects.filter(func="backups.tasks.scheduled_backup").update(
            next_run=timezone.now() - timedelta(minutes=5, seconds=1))
    """)
    started = datetime.now(UTC)
    world.cluster()
    # django-q2's cluster runs its scheduler every 30 seconds.
    first = world.wait_until(
        "the scheduled backup to succeed",
        lambda: next(
            (
                r
                for r in world.runs("files")
                if r["trigger"] == "schedule" and r["status"] == "succeeded"
            ),
            None,
        ),
        timeout=60,
    )
    world.wait_until(
        "the older backup to be pruned", lambda: world.run(old_id)["status"] == "pruned"
    )
    # Five missed slots, one backup. (The scheduler's next pass, 30 s after the first,
    # may start the next minute's backup: that one belongs to a new slot.)
    same_pass = [
        r
        for r in world.runs("files")
        if r["trigger"] == "schedule"
        and r["queued_at"] - first["queued_at"] < timedelta(seconds=25)
    ]
    assert same_pass == [first]
    next_run = _moment(
        world.query(
            "SELECT next_run FROM django_q_schedule WHERE func = %s",
            ("backups.tasks.scheduled_backup",),
        )[0][0]
    )
    assert next_run > started
    old_archive = Path(world.run(old_id)["archive"])
    assert not old_archive.exists()
    assert not old_archive.with_name(old_archive.name + ".sha256").exists()


DRIVER = """
import time
from django_q.tasks import async_task
from backups.models import Source
from backups.services.backup import backup_request
from backups.services.runs import SourceBusy

per_source = {per_source}
sources = list(Source.objects.order_by("name"))
made = {{source.name: 0 for source in sources}}
busy = 0
deadline = time.monotonic() + 60
while any(count < per_source for count in made.values()) and time.monotonic() < deadline:
    for source in sources:
        if made[source.name] >= per_source:
            continue
        try:
            run = backup_request(source=source, trigger="api")
        except SourceBusy:
            busy += 1
            continue
        # A second delivery of the same run, as a broker retry would make.
        async_task("backups.tasks.execute_run", run.pk)
        made[source.name] += 1
    time.sleep(0.05)
print(json.dumps({{"made": made, "busy": busy}}))
"""


@pytest.fixture
def redis_db():
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


def test_two_clusters_on_redis_run_each_backup_once_and_one_at_a_time_per_source(world, redis_db):
    sources, per_source = ["r0", "r1", "r2"], 4
    world.python(
        "from backups.services.catalog import policy_create, source_create\n"
        "policy = policy_create(name='p', keep_last=10, verify_after_backup=False)\n"
        + "".join(
            f"source_create(name={name!r}, kind='directory', "
            f"location={world.folder(name)!r}, policy=policy)\n"
            for name in sources
        )
    )
    world.cluster("redis-a", REDIS_URL=redis_db)
    world.cluster("redis-b", REDIS_URL=redis_db)
    driven = json.loads(world.python(DRIVER.format(per_source=per_source), REDIS_URL=redis_db))
    assert driven["made"] == {name: per_source for name in sources}
    assert driven["busy"] > 0, "the per-source lock refused a concurrent backup"

    total = len(sources) * per_source

    def all_done():
        runs = {name: world.runs(name) for name in sources}
        finished = all(
            len(r) == per_source and all(run["status"] not in ("queued", "running") for run in r)
            for r in runs.values()
        )
        # Both deliveries of every run were taken and processed by some worker (a third
        # one when a run waited longer than QUEUE_RESEND_AFTER_S and was sent again).
        delivered = world.query(
            "SELECT COUNT(*) FROM django_q_task WHERE func = %s", ("backups.tasks.execute_run",)
        )[0][0]
        return finished and delivered >= 2 * total and runs

    runs = world.wait_until("every delivery to be processed", all_done, timeout=60)
    for name, source_runs in runs.items():
        assert [run["status"] for run in source_runs] == ["succeeded"] * per_source, name
        # Executed once: a second execution would have found its archive already there.
        for run in source_runs:
            assert len(list((world.archives / name).glob(f"*-{run['id']}.tar.zst"))) == 1
        assert len(list((world.archives / name).glob("*.tar.zst"))) == per_source
        # Never two at a time for one source.
        intervals = sorted((run["started_at"], run["finished_at"]) for run in source_runs)
        for (_start, end), (next_start, _end) in zip(intervals, intervals[1:], strict=False):
            assert next_start >= end, f"{name}: overlapping runs {intervals}"


# The worker of a host whose clock runs two minutes behind: its process alone is wrong.
CLOCK_BEHIND = """
from datetime import timedelta
from django.core.management import call_command
from django.utils import timezone

real_now = timezone.now
timezone.now = lambda: real_now() - timedelta(minutes=2)
call_command("backup", "shop", "--inline", "--json")
"""


def _shop(world: World, megabytes: int = 1) -> None:
    location = world.pod("shop", "db-0", megabytes=megabytes)
    world.python(f"""
        from backups.services.catalog import policy_create, source_create
        policy = policy_create(name="p", keep_last=5, verify_after_backup=False)
        source_create(name="shop", kind="kubernetes", location={location!r}, policy=policy)
    """)


def test_a_worker_whose_clock_is_behind_is_not_reaped_while_it_beats(world):
    _shop(world)
    worker = world.spawn(
        [sys.executable, "-c", PRELUDE + CLOCK_BEHIND], "behind", FAKE_KUBECTL_STALL=6
    )
    run_id = world.wait_until(
        "the backup to start",
        lambda: (r := world.runs("shop")) and r[0]["status"] == "running" and r[0]["id"],
    )
    time.sleep(2)  # a beat or two
    beat = world.run(run_id)["heartbeat_at"]
    assert abs(datetime.now(UTC) - beat) < timedelta(seconds=5), "heartbeats use one clock"
    # The reaper runs on another host's process, with a clock that is right.
    reaped = json.loads(
        world.python(
            "from backups.services.runs import reap_abandoned; print(json.dumps(reap_abandoned()))"
        )
    )
    assert reaped == []
    assert worker.wait(timeout=60) == 0, world.logs()
    assert world.run(run_id)["status"] == "succeeded"


def test_an_inline_backup_killed_outright_does_not_hold_up_the_next_one(world):
    _shop(world)
    folder = world.archives / "shop"
    killed = world.spawn(
        [sys.executable, "manage.py", "backup", "shop", "--inline"], "killed", FAKE_KUBECTL_STALL=60
    )
    first = world.wait_until(
        "the backup to be writing",
        lambda: (r := world.runs("shop")) and _temps(folder, r[0]["id"]) and r[0]["id"],
    )
    world.kill(killed)

    # At once, long before its heartbeat could go stale.
    again = world.manage("backup", "shop", "--inline", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "succeeded"
    gone = world.run(first)
    assert gone["status"] == "abandoned"
    assert gone["error"].startswith(f"Its process was gone (pid {killed.pid} on ")
    assert _files_of(folder, first) == []


def _refuse_ends(world: World) -> tuple[str, str]:
    """Return SQL making the database refuse to end a running run (but let it be reaped)."""
    when = "OLD.status = 'running' AND NEW.status IN ('succeeded', 'warning', 'failed')"
    if world.database_url.startswith("sqlite"):
        return (
            f"CREATE TRIGGER refuse_end BEFORE UPDATE ON backups_run WHEN {when} "
            "BEGIN SELECT RAISE(ABORT, 'the catalog is read-only'); END",
            "DROP TRIGGER refuse_end",
        )
    return (
        "CREATE FUNCTION refuse_end() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF {when} THEN RAISE EXCEPTION 'the catalog is read-only'; END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER refuse_end BEFORE UPDATE ON backups_run "
        "FOR EACH ROW EXECUTE FUNCTION refuse_end()",
        "DROP TRIGGER refuse_end ON backups_run; DROP FUNCTION refuse_end()",
    )


def test_a_run_whose_end_the_database_refuses_is_left_to_the_reaper(world):
    location = world.folder("files")
    world.python(f"""
        from backups.services.catalog import policy_create, source_create
        policy = policy_create(name="p", verify_after_backup=False)
        source_create(name="files", kind="directory", location={location!r}, policy=policy)
    """)
    refuse, accept = _refuse_ends(world)
    world.query(refuse)
    refused = world.manage("backup", "files", "--inline")
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert "trying again" in refused.stderr and "could not be recorded" in refused.stderr
    [last] = refused.stderr.strip().splitlines()[-1:]
    assert last.startswith("error: backup #") and "refused to record its end" in last
    [stuck] = world.runs("files")
    assert stuck["status"] == "running"

    world.query(accept)
    again = world.manage("backup", "files", "--inline", "--json")
    assert again.returncode == 0, again.stderr
    assert world.run(stuck["id"])["status"] == "abandoned"


def _group(pgid: int) -> list[int]:
    """Return the live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def test_a_worker_host_shutting_down_cancels_its_run_and_every_process_exits(world):
    _shop(world, megabytes=3)
    folder = world.archives / "shop"
    run_id = int(world.manage("backup", "shop").stdout)
    cluster = world.cluster("host", SLOW_KUBECTL_BPS=150_000)
    world.wait_until("the backup to be writing", lambda: _writing(world, run_id, folder))
    assert len(_group(cluster.pid)) > 3  # master, sentinel, workers, pusher, monitor, kubectl

    # What systemd does to stop the service: SIGTERM to every process of it at once.
    os.killpg(cluster.pid, signal.SIGTERM)
    world.wait_until("every process to exit", lambda: not _group(cluster.pid), timeout=15)
    assert cluster.wait(timeout=5) == 0
    run = world.run(run_id)
    assert run["status"] == "cancelled"
    assert run["error"].startswith("Cancelled: its worker was shut down (SIGTERM)")
    assert not list(folder.glob("*.tmp"))
    assert _files_of(folder, run_id) == []


def test_a_database_restart_in_the_middle_of_a_backup_costs_it_nothing(postgres_world):
    # Only a database server drops its clients' connections.
    world = postgres_world
    _shop(world, megabytes=2)
    folder = world.archives / "shop"
    worker = world.spawn(
        [sys.executable, "manage.py", "backup", "shop", "--inline", "--json"],
        "inline",
        SLOW_KUBECTL_BPS=300_000,
    )
    run_id = world.wait_until(
        "the backup to start", lambda: world.runs("shop") and world.runs("shop")[0]["id"]
    )
    world.wait_until("the backup to be writing", lambda: _writing(world, run_id, folder))
    # What a restart or a failover does to every session of the database.
    world.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert worker.wait(timeout=60) == 0, world.logs()
    run = world.run(run_id)
    assert run["status"] == "succeeded", run["log"]
    count = world.query("SELECT COUNT(*) FROM backups_manifest WHERE run_id = %s", (run_id,))
    assert count == [(1,)], "the catalog was indexed"


def test_an_in_place_restore_killed_outright_does_not_hold_up_the_next_one(world):
    _shop(world)
    made = world.manage("backup", "shop", "--inline", "--json")
    assert made.returncode == 0, made.stderr
    backup_id = str(json.loads(made.stdout)["id"])
    restore = [sys.executable, "manage.py", "restore", backup_id, "--in-place", "--yes"]
    killed = world.spawn([*restore, "--inline"], "killed", FAKE_KUBECTL_STALL=60)
    first = world.wait_until(
        "the restore to start",
        lambda: (r := world.runs("shop", "restore")) and r[0]["status"] == "running" and r[0]["id"],
    )
    world.kill(killed)

    again = world.manage(*restore[2:], "--inline", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "succeeded"
    gone = world.run(first)
    assert gone["status"] == "abandoned"
    assert gone["error"].startswith(f"Its process was gone (pid {killed.pid} on ")
