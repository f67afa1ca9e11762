"""Benchmark run_backup against the command-line pipeline, on three data sets.

    .venv/bin/python -m bench.backup [--quick] [--repeat N] [--only NAME ...]

For each data set (see bench.datasets), on a warm page cache, this runs back to back,
N times, interleaved: our `run_backup` (zstd level 3) in a child process, and
`tar -cf - DIR | zstd -T0 -3 | tee OUT | sha256sum` under bash. Wall and CPU time (user +
system, the child and everything it waited for) come from wait4() for that child alone.
Peak RSS is our child's own high-water mark (VmHWM); the CLI's is its largest process, as
GNU time reports it. The table shows each side's best run (the least disturbed by other
work on the machine) and the median ratio; ratio = our throughput / the CLI's. Ours also
fsyncs the archive, sidecar and manifest; the CLI pipeline does not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import datasets

OUT = datasets.ROOT / "out"
TARGETS = {"bigfile": 1.1, "stdlib": 0.8, "small": 0.6}
RSS_LIMIT_MB = 120
CLI = "tar -cf - {src} | zstd -q -T0 -3 | tee {out} | sha256sum"


@dataclass
class Measure:
    """One timed run: wall and CPU seconds, peak RSS in MiB, archive size in bytes."""

    wall: float
    cpu: float
    rss_mb: float
    size: int
    fsync: float = 0.0


def _timed(argv: list[str], **kwargs) -> tuple[Measure, bytes]:
    """Run `argv` as a child and measure it alone with wait4()."""
    # The previous run's dirty pages must not be written back during this one.
    os.sync()
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, **kwargs)
    output = child.stdout.read()
    _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{argv[:3]}... failed with status {child.returncode}")
    return Measure(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, 0), output


def run_ours(source: Path, dest: Path) -> Measure:
    """Back up `source` with run_backup in a fresh interpreter."""
    if dest.exists():
        shutil.rmtree(dest)
    measure, output = _timed(
        [sys.executable, "-m", "bench.backup", "--child", str(source), str(dest)],
        cwd=datasets.ROOT.parent.parent,
    )
    result = json.loads(output)
    measure.size = result["size"]
    # The child's own peak since exec: wait4's ru_maxrss also counts the resident set a
    # forked child inherits from this process.
    measure.rss_mb = result["peak_kib"] / 1024
    measure.fsync = result["fsync_s"]
    return measure


def run_cli(source: Path, out: Path) -> Measure:
    """Run the command-line pipeline the ratio is measured against."""
    out.unlink(missing_ok=True)
    command = CLI.format(src=_quote(Path(source.name)), out=_quote(out))
    # GNU time reports the pipeline's peak RSS (its largest process) without ours.
    measure, _ = _timed(
        ["/usr/bin/time", "-f", "%M", "-o", str(out) + ".rss", "bash", "-c", command],
        cwd=source.parent,
    )
    rss_file = Path(str(out) + ".rss")
    measure.rss_mb = int(rss_file.read_text().split()[-1]) / 1024
    rss_file.unlink()
    measure.size = out.stat().st_size
    return measure


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


def _child(source: str, dest: str) -> None:
    """Entry point of the measured child: one backup, its result as JSON on stdout."""
    from backups.engine.backup import BackupRequest, run_backup
    from backups.engine.hooks import Hooks

    request = BackupRequest(
        kind="directory",
        location=source,
        dest_dir=Path(dest),
        stem="20260101T000000Z-1",
        manifest_header={"run": 1, "source": {"name": "bench", "kind": "directory"}},
    )
    # Time spent making the files durable, which the CLI pipeline does not do: on a disk
    # shared with other work it is where most of the noise comes from.
    fsync = os.fsync
    waited = 0.0

    def timed_fsync(fd: int) -> None:
        nonlocal waited
        start = time.perf_counter()
        fsync(fd)
        waited += time.perf_counter() - start

    os.fsync = timed_fsync
    result = run_backup(request, Hooks())
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"size": result.size, "peak_kib": peak_kib, "fsync_s": waited}))


def warm(source: Path) -> None:
    """Read the data set once so both sides start from a warm page cache."""
    # Through a pipe: GNU tar skips reading file data when its output is /dev/null.
    subprocess.run(f"tar -cf - -C {_quote(source)} . | cat > /dev/null", shell=True, check=True)


def main(argv: list[str] | None = None) -> None:
    """Build the data sets if needed, run the comparison, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data sets (smoke test)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per side (default 3)")
    parser.add_argument("--only", nargs="*", choices=list(datasets.DATASETS), default=None)
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "DEST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return
    repeat = args.repeat or (1 if args.quick else 3)
    names = args.only or list(datasets.DATASETS)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        source = datasets.DATASETS[name](args.quick)
        files, size = datasets.tree_size(source)
        print(f"{name}: {files} files, {size / 1e6:.0f} MB; warming up", file=sys.stderr)
        warm(source)
        ours: list[Measure] = []
        cli: list[Measure] = []
        for index in range(repeat):
            ours.append(run_ours(source, OUT / "ours"))
            cli.append(run_cli(source, OUT / "cli.tar.zst"))
            print(
                f"  run {index + 1}: ours {ours[-1].wall:.2f} s (fsync {ours[-1].fsync:.2f} s),"
                f" cli {cli[-1].wall:.2f} s",
                file=sys.stderr,
            )
        shutil.rmtree(OUT / "ours", ignore_errors=True)
        (OUT / "cli.tar.zst").unlink(missing_ok=True)
        rows.append((name, files, size, ours, cli))
    print_table(rows, repeat, args.quick)


def print_table(rows, repeat: int, quick: bool) -> None:
    """Print the comparison, one block per data set."""
    print()
    print(
        f"backup benchmark ({'quick data sets, ' if quick else ''}best of {repeat}, warm cache, "
        f"{os.cpu_count()} CPUs)"
    )
    header = (
        f"{'data set':<10} {'side':<5} {'wall s':>7} {'MB/s':>7} {'CPU s':>6} "
        f"{'RSS MB':>7} {'fsync s':>7} {'archive MB':>10} {'ratio':>6} {'median':>7} {'cpu':>5} "
        f"{'target':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, _files, size, ours, cli in rows:
        best_ours = min(ours, key=lambda m: m.wall)
        best_cli = min(cli, key=lambda m: m.wall)
        ratio = best_cli.wall / best_ours.wall
        median = statistics.median(c.wall / o.wall for o, c in zip(ours, cli, strict=True))
        # CPU seconds spent by the CLI per CPU second of ours: the work each side does,
        # which other load on the machine disturbs far less than wall time.
        work = min(m.cpu for m in cli) / min(m.cpu for m in ours)
        target = TARGETS.get(name, 0)
        rss = max(m.rss_mb for m in ours)
        verdict = "ok" if ratio >= target and rss < RSS_LIMIT_MB else "MISS"
        if quick:
            verdict = "(quick: not meaningful)"
        summary = f"{ratio:>6.2f} {median:>7.2f} {work:>5.2f} {'>=' + str(target):>7} {verdict}"
        for side, best, extra in (("ours", best_ours, summary), ("cli", best_cli, "")):
            print(
                f"{name if side == 'ours' else '':<10} {side:<5} {best.wall:>7.2f} "
                f"{size / 1e6 / best.wall:>7.0f} {best.cpu:>6.2f} "
                f"{max(m.rss_mb for m in (ours if side == 'ours' else cli)):>7.0f} "
                f"{f'{best.fsync:.2f}' if side == 'ours' else '-':>7} "
                f"{best.size / 1e6:>10.1f} {extra}"
            )
    print(
        "\nratio: CLI wall / ours (best runs); median: of the per-run ratios; cpu: CLI CPU / "
        "ours; fsync: time ours waited for the disk (inside its wall time; the CLI does not "
        f"fsync).\npeak RSS limit for ours: {RSS_LIMIT_MB} MB. CLI: {CLI}"
    )


if __name__ == "__main__":
    main()
