"""Two worker hosts writing to one S3 bucket: each backup is written once, or not at all.

The hosts are real clusters with host names of their own (tests/fleet_helpers.py) on
one Redis broker and one database; their policy's storage is a bucket of the real S3
server (tests/s3server.py). The bucket has versioning on, so that an object written twice,
or written and deleted, leaves a trace the test reads: everything is judged from the
bucket itself, listed with boto3, against the catalog.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
from collections import defaultdict

import pytest

from tests.fleet_helpers import (
    FIRE_SLOT,
    HOUSEKEEPING,
    assert_never_overlapping,
    fleet_world,
    host,
    needs_unshare,
    redis_flushed,
    runs_by_source,
)
from tests.s3server import credentials_env, isolated_aws_env

REDIS_URL = "redis://127.0.0.1:6379/10"
PREFIX = "site"
ENV_PREFIX = "FLEET_S3"
GOOD = ("succeeded", "warning")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180), needs_unshare]

# Slots fired back to back, as a schedule every few seconds would fire them, each new run
# delivered twice (a broker's retry), while a few running backups are cancelled.
DRIVER = """
import time
from django_q.tasks import async_task
from backups.models import Run, Source
from backups.services.runs import run_cancel
from backups.services.schedules import backup_scheduled

per_source, cancels = {per_source}, {cancels}
sources = list(Source.objects.order_by("name"))
made = {{source.name: 0 for source in sources}}
missed = cancelled = 0
deadline = time.monotonic() + 60
while any(n < per_source for n in made.values()) and time.monotonic() < deadline:
    for source in sources:
        if made[source.name] >= per_source:
            continue
        run = backup_scheduled(source_id=source.pk)
        if run is None:
            missed += 1
            continue
        async_task("backups.tasks.execute_run", run.pk)
        made[source.name] += 1
    if cancelled < cancels:
        writing = Run.objects.filter(
            kind="backup", status="running", source__name__startswith="big",
            bytes_done__gt=0, bytes_done__lt=6 << 20,
        ).first()
        if writing is not None and run_cancel(run=writing):
            cancelled += 1
    time.sleep(0.05)
print(json.dumps({{"made": made, "missed": missed, "cancelled": cancelled}}))
"""


@pytest.fixture
def redis_db():
    yield from redis_flushed(REDIS_URL)


@pytest.fixture
def bucket(s3_server):
    """A bucket of its own, versioned: an overwrite or a delete stays visible."""
    name = f"fleet-{secrets.token_hex(4)}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def world(tmp_path, redis_db, s3_server, bucket):
    env = {**isolated_aws_env(tmp_path), **credentials_env(ENV_PREFIX)}
    for world in fleet_world(tmp_path, redis_db, STATE_DIR=str(tmp_path / "state"), **env):
        world.s3 = s3_server.client()
        world.bucket = bucket
        yield world


def fleet(world, sizes: dict[str, int]) -> None:
    """Create the S3 storage, a policy writing to it, and a pod source per `sizes` entry."""
    locations = {name: world.pod("shop", name, megabytes=mb) for name, mb in sizes.items()}
    world.python(f"""
        from backups.models import Storage
        from backups.services.catalog import policy_create, source_create
        from backups.services.storages import storage_create
        storage = storage_create(
            name="bucket", kind="s3", url="s3://{world.bucket}/{PREFIX}",
            endpoint={world.s3.meta.endpoint_url!r}, credentials_env={ENV_PREFIX!r},
        )
        # Scheduled (so its slots count), but never due by itself during the test.
        policy = policy_create(
            name="p", schedule="0 0 1 1 *", keep_last=50, verify_after_backup=False,
            storage=storage,
        )
        for name, location in {locations!r}.items():
            source_create(name=name, kind="kubernetes", location=location, policy=policy)
    """)


def catalog(world) -> dict[int, dict]:
    """Return every backup run of the catalog by id."""
    columns = ("id", "name", "status", "archive", "sha256", "size", "error", "trigger", "log")
    rows = world.query(
        "SELECT r.id, s.slug, r.status, r.archive, r.sha256, r.size, r.error, r.trigger, r.log "
        "FROM backups_run r JOIN backups_source s ON s.id = r.source_id "
        "WHERE r.kind = 'backup' ORDER BY r.id"
    )
    return {row[0]: dict(zip(columns, row, strict=True)) for row in rows}


def versions(world) -> tuple[dict[str, list[dict]], list[str]]:
    """Return the bucket's object versions by key, and the keys of its delete markers."""
    found, deleted = defaultdict(list), []
    pages = world.s3.get_paginator("list_object_versions").paginate(
        Bucket=world.bucket, Prefix=f"{PREFIX}/"
    )
    for page in pages:
        for version in page.get("Versions", ()):
            found[version["Key"]].append(version)
        deleted += [marker["Key"] for marker in page.get("DeleteMarkers", ())]
    return dict(found), deleted


def uploads(world) -> list[str]:
    """Return the keys of the bucket's incomplete multipart uploads."""
    pages = world.s3.get_paginator("list_multipart_uploads").paginate(
        Bucket=world.bucket, Prefix=f"{PREFIX}/"
    )
    return [upload["Key"] for page in pages for upload in page.get("Uploads", ())]


def keys_of(run: dict, bucket: str) -> tuple[str, str, str]:
    """Return the keys of a published backup: archive, checksum file, manifest."""
    folder = f"{PREFIX}/{run['name']}/"
    assert run["archive"].startswith(f"s3://{bucket}/{folder}"), run
    name = run["archive"].rpartition("/")[2]
    return folder + name, folder + name + ".sha256", folder + name.split(".")[0] + ".manifest.json"


def read(world, key: str) -> bytes:
    return world.s3.get_object(Bucket=world.bucket, Key=key)["Body"].read()


def wait_for_tasks(world, runs: dict[int, dict]) -> None:
    """Wait until the task of every good backup has ended, its follow-ups done."""
    names = {f"backup-{pk}" for pk, run in runs.items() if run["status"] in GOOD}

    def ended():
        rows = world.query(
            "SELECT DISTINCT name FROM django_q_task WHERE func = %s",
            ("backups.tasks.execute_run",),
        )
        return names <= {name for (name,) in rows}

    world.wait_until("the backups' tasks to end", ended, timeout=30)


def assert_bucket_matches_catalog(world) -> dict[int, dict]:
    """Fail unless the bucket holds exactly the three objects of each good backup, once."""
    wait_for_tasks(world, catalog(world))
    runs = catalog(world)
    found, deleted = versions(world)
    # Each source's RUNBOOK.md is rewritten after every good backup, by design.
    runbooks = {key for key in found if key.endswith("/RUNBOOK.md")}
    assert runbooks == {
        f"{PREFIX}/{run['name']}/RUNBOOK.md" for run in runs.values() if run["status"] in GOOD
    }
    found = {key: found[key] for key in found if key not in runbooks}
    expected = {}
    for run in runs.values():
        if run["status"] in GOOD:
            for key in keys_of(run, world.bucket):
                expected[key] = run["id"]
        else:
            # A failed, cancelled or abandoned run left no object, not even for a moment.
            stray = [key for key in found if f"-{run['id']}." in key.rpartition("/")[2]]
            assert not stray, (run["status"], run["error"], stray)
    assert sorted(found) == sorted(expected), "objects and the catalog's good backups differ"
    # Written once: a second write of any key would be a second version.
    assert {key: len(v) for key, v in found.items() if len(v) != 1} == {}
    assert deleted == [], "an object was deleted (a publish undone, or a stray removed)"
    for run in runs.values():
        if run["status"] not in GOOD:
            continue
        archive, sidecar, manifest_key = keys_of(run, world.bucket)
        data = read(world, archive)
        digest = hashlib.sha256(data).hexdigest()
        name = archive.rpartition("/")[2]
        assert (digest, len(data)) == (run["sha256"], run["size"]), run["id"]
        assert read(world, sidecar).decode() == f"{digest}  {name}\n"
        manifest = json.loads(read(world, manifest_key))
        assert manifest["run"] == run["id"]
        assert manifest["archive"] == {
            "name": name,
            "size": len(data),
            "sha256": digest,
            "compression": "zstd",
        }
    assert uploads(world) == [], "an incomplete multipart upload was left"
    return runs


def test_two_hosts_writing_to_one_bucket_write_each_backup_once(world):
    # Two sources big enough for a multipart upload (two 8 MiB parts), four small ones
    # sent with one PutObject when they are published.
    sizes = {"big-0": 12, "big-1": 12, **{f"small-{n}": 1 for n in range(4)}}
    fleet(world, sizes)
    # Pods on a fast link, slow enough that a cancel finds a big backup still streaming.
    host(world, "host-a", SLOW_KUBECTL_BPS=8_000_000)
    host(world, "host-b", SLOW_KUBECTL_BPS=8_000_000)
    per_source, cancels = 4, 2
    driven = json.loads(world.python(DRIVER.format(per_source=per_source, cancels=cancels)))
    assert driven["made"] == dict.fromkeys(sizes, per_source), driven
    assert driven["missed"] > 0, "no slot came while its source was still busy"
    total = len(sizes) * per_source

    def settled():
        runs = runs_by_source(world, sizes)
        active = any(r["status"] in ("queued", "running") for rs in runs.values() for r in rs)
        # Both deliveries of every run were taken and processed by one host or the other;
        # a run that waited in the queue longer than QUEUE_RESEND_AFTER_S (a loaded
        # machine) was handed to the workers a third time, and that delivery found it
        # claimed.
        delivered = world.query(
            "SELECT COUNT(*) FROM django_q_task WHERE func = %s", ("backups.tasks.execute_run",)
        )[0][0]
        return not active and delivered >= 2 * total and runs

    runs = world.wait_until("every delivery to be processed", settled, timeout=90)
    assert_bucket_matches_catalog(world)
    assert_never_overlapping(runs)
    statuses = [run["status"] for rs in runs.values() for run in rs]
    # A cancel that comes while the backup is being published is too late: it finishes.
    assert 1 <= statuses.count("cancelled") <= driven["cancelled"], statuses
    assert statuses.count("succeeded") == total - statuses.count("cancelled"), statuses
    hosts = {run["host"] for rs in runs.values() for run in rs if run["status"] == "succeeded"}
    assert hosts == {"host-a", "host-b"}, "both hosts published backups"


def test_a_host_killed_mid_upload_leaves_no_object_and_its_upload_is_aborted(world):
    fleet(world, {"big": 24})
    # A slow pod: the upload's first part is sent after about 3 s, the backup takes 8 s.
    lost = host(world, "host-a", SLOW_KUBECTL_BPS=3_000_000)
    killed = json.loads(world.python(FIRE_SLOT))["big"]

    def uploading():
        return any(f"-{killed}." in key for key in uploads(world))

    world.wait_until("host-a to be uploading the backup", uploading, timeout=30)
    os.killpg(lost.pid, signal.SIGKILL)  # the host is gone, in the middle of the upload
    lost.wait(timeout=10)
    host(world, "host-b")

    # Housekeeping declares the run abandoned once its heartbeat is older than
    # ABANDON_AFTER_S (10 s here), aborts the upload it left, and hands its slot over.
    def taken_over():
        world.python(HOUSEKEEPING)
        runs = catalog(world)
        done = [run for pk, run in runs.items() if pk != killed and run["status"] in GOOD]
        return runs[killed]["status"] == "abandoned" and done and runs

    runs = world.wait_until("the slot to be taken over", taken_over, timeout=60)
    lost_run = runs[killed]
    assert lost_run["error"].endswith(".") and "Traceback" not in lost_run["error"], lost_run
    assert "\n" not in lost_run["error"].strip()
    (after,) = [run for pk, run in runs.items() if pk != killed]
    assert after["trigger"] == "schedule" and after["status"] == "succeeded", after
    assert runs_by_source(world, ["big"])["big"][-1]["host"] == "host-b"
    # Nothing of the killed run in the bucket, its upload aborted; the new backup whole.
    assert_bucket_matches_catalog(world)


def test_a_host_paused_mid_backup_publishes_nothing_when_it_wakes(world):
    # Under one part: the archive would be sent with one PutObject when published.
    fleet(world, {"paced": 4})
    paused = host(world, "host-a", SLOW_KUBECTL_BPS=500_000)
    stalled = json.loads(world.python(FIRE_SLOT))["paced"]
    world.wait_until(
        "host-a to be streaming the backup",
        lambda: world.run(stalled)["bytes_done"] > 0,
        timeout=30,
    )
    # A stalled virtual machine, a long pause of the process: it beats no more.
    os.killpg(paused.pid, signal.SIGSTOP)
    host(world, "host-b")

    def taken_over():
        world.python(HOUSEKEEPING)
        runs = catalog(world)
        done = [run for pk, run in runs.items() if pk != stalled and run["status"] in GOOD]
        return runs[stalled]["status"] == "abandoned" and done

    world.wait_until("the slot to be taken over", taken_over, timeout=60)
    os.killpg(paused.pid, signal.SIGCONT)
    # The woken worker goes on until it finds the run taken from it, then ends its task.
    log = world.root / "host-a.log"

    def task_ended():
        text = log.read_text(errors="replace")
        return f"(backup-{stalled})" in text.partition("Processed")[2] and text

    text = world.wait_until("host-a to end the backup's task", task_ended, timeout=30)
    assert world.run(stalled)["status"] == "abandoned"
    # Nothing published by the worker that lost the run, not even for a moment.
    assert_bucket_matches_catalog(world)
    assert f"Run #{stalled} was taken from this worker" in text
