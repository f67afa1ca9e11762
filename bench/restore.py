"""Restore throughput: our verified `restore_archive` against `zstd -d < A | tar -xf - -C DEST`.

    .venv/bin/python -m bench.restore [--quick] [--repeat N] [--only NAME ...]

Each data set of `bench.datasets` is backed up once with the engine's `run_backup` (a
PAX tar through zstd -3, a manifest with every file's sha256; cached under
var/bench/archives), then restored back to back, in alternating order after one untimed
warm-up, by the command-line pipeline and by `restore_archive`, which also checks the
archive's sha256 and every file's sha256 and size against the manifest. Both extract into
a tmpfs (/dev/shm): on this machine's ext4, creating files soon after a mass delete is
10-20x slower, which would measure the disk's inode allocator rather than the restore.

Ratio is our throughput over the pipeline's (higher is better); the targets are 1.0 for
the big file, 0.6 for the stdlib tree and 0.4 for 50,000 small files. CPU seconds (this
process and its children) are printed too: on a busy machine the wall-time ratio drifts
towards the CPU ratio, since there is then no idle core to overlap work on.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backups.engine.backup import BackupRequest, run_backup
from backups.engine.hooks import Hooks
from backups.engine.restore import RestoreRequest, restore_archive
from bench import datasets

ARCHIVES = datasets.ROOT / "archives"
TARGETS = {"bigfile": 1.0, "stdlib": 0.6, "small": 0.4}
SCRATCH_PARENT = Path("/dev/shm")


def make_archive(name: str, source: Path) -> tuple[Path, Path]:
    """Back `source` up with the engine (cached by name); return archive and manifest."""
    folder = ARCHIVES / f"restore-{name}"
    stem = "20250101T000000Z-0"
    archive = folder / f"{stem}.tar.zst"
    manifest = folder / f"{stem}.manifest.json"
    if archive.exists() and manifest.exists():
        return archive, manifest
    if folder.exists():
        shutil.rmtree(folder)
    result = run_backup(
        BackupRequest(kind="directory", location=str(source), dest_dir=folder, stem=stem),
        Hooks(),
    )
    return result.archive, result.manifest


def _cpu() -> float:
    """Return the CPU seconds used so far by this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def restore_cli(archive: Path, dest: Path) -> tuple[float, float]:
    """Time the command-line pipeline extracting `archive` into the new folder `dest`."""
    dest.mkdir()
    cpu, started = _cpu(), time.perf_counter()
    # tar stops reading at the end-of-archive blocks, so zstd may get SIGPIPE writing the
    # record padding after them: only tar's status counts, as in an interactive shell.
    subprocess.run(
        ["bash", "-c", 'zstd -qd < "$1" 2>/dev/null | tar -xf - -C "$2"', "-", archive, dest],
        check=True,
    )
    return time.perf_counter() - started, _cpu() - cpu


def restore_ours(archive: Path, manifest: Path, dest: Path) -> tuple[float, float]:
    """Time `restore_archive` extracting `archive` into the new folder `dest`, fully verified."""
    cpu, started = _cpu(), time.perf_counter()
    restore_archive(
        RestoreRequest(archive=archive, manifest=manifest, kind="directory", target=str(dest)),
        Hooks(),
    )
    return time.perf_counter() - started, _cpu() - cpu


def _extract_once(restore, scratch: Path) -> tuple[float, float]:
    """Time one extraction into a new folder under `scratch`, then delete what it wrote.

    Deleting right away makes every timed run start the same way, just after a deletion
    of the same size: on this virtual machine, writing to memory that has lain unused for
    a few seconds costs several times more than reusing what was just freed (dd of 1 GiB
    into /dev/shm: 0.6 s right after deleting 1 GiB, 1.1-1.5 s three seconds later, 1.8-5
    s beside a file that is kept), which would otherwise favour whichever side runs first.
    """
    dest = scratch / "dest"
    try:
        return restore(dest)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.restore", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small data sets (smoke test)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each; best is kept")
    parser.add_argument("--only", nargs="*", choices=list(datasets.DATASETS), default=None)
    args = parser.parse_args(argv)
    names = args.only or list(datasets.DATASETS)
    scratch_parent = SCRATCH_PARENT if SCRATCH_PARENT.is_dir() else None
    if scratch_parent is None:
        print("warning: /dev/shm is missing; extracting to the temp folder", file=sys.stderr)
    rows = []
    for name in names:
        source = datasets.DATASETS[name](args.quick)
        label = name + ("-quick" if args.quick else "")
        archive, manifest = make_archive(label, source)
        files, size = datasets.tree_size(source)
        runs = {"cli": [], "ours": []}
        timed = {
            "cli": functools.partial(restore_cli, archive),
            "ours": functools.partial(restore_ours, archive, manifest),
        }
        scratch = Path(tempfile.mkdtemp(prefix="bench-restore-", dir=scratch_parent))
        try:
            _extract_once(timed["cli"], scratch)  # warm-up, not counted
            for round_ in range(args.repeat):
                # Alternate who goes first, so neither side always gets the warmer start.
                for side in ("cli", "ours") if round_ % 2 == 0 else ("ours", "cli"):
                    runs[side].append(_extract_once(timed[side], scratch))
        finally:
            shutil.rmtree(scratch)
        cli_runs, our_runs = runs["cli"], runs["ours"]
        median = statistics.median(c[0] / o[0] for c, o in zip(cli_runs, our_runs, strict=True))
        rows.append((label, files, size, min(cli_runs), min(our_runs), median, TARGETS[name]))
    print_table(rows, args.repeat, os.getloadavg()[0])
    return 0


def print_table(rows, repeat: int, load: float) -> None:
    """Print wall and CPU times, throughput and the ratio against the target."""
    header = (
        f"{'data set':<14}{'files':>7}{'MB':>8}{'cli s':>7}{'cpu':>6}{'MB/s':>6}"
        f"{'ours s':>8}{'cpu':>6}{'MB/s':>6}{'ratio':>7}{'median':>7}{'target':>8}"
    )
    print(
        f"restore, best of {repeat} by wall time, into {SCRATCH_PARENT} (ours verifies every "
        f"file); load average at the end {load:.1f} on {os.cpu_count()} CPUs"
    )
    print(header)
    print("-" * len(header))
    for label, files, size, (cli, cli_cpu), (ours, our_cpu), median, target in rows:
        megabytes = size / 1e6
        ratio = cli / ours
        verdict = "ok" if ratio >= target else "BELOW"
        print(
            f"{label:<14}{files:>7}{megabytes:>8.1f}{cli:>7.2f}{cli_cpu:>6.2f}"
            f"{megabytes / cli:>6.0f}{ours:>8.2f}{our_cpu:>6.2f}{megabytes / ours:>6.0f}"
            f"{ratio:>7.2f}{median:>7.2f}{target:>6.1f} {verdict}"
        )
    print("ratio: of the best runs; median: of the per-run ratios (each run back to back)")


if __name__ == "__main__":
    raise SystemExit(main())
