"""Benchmark incremental backups against restic, whole command against whole command.

    .venv/bin/python -m bench.incremental [--quick] [--only NAME ...]

On each data set (the standard library and 50,000 small files; see bench.datasets),
copied to a scratch tree, in one run and side by side: `manage.py backup SRC --inline`
(start-up included, SQLite catalog, no verification after the backup) and `restic backup`
of the same tree into a fresh repository, for the first backup, a no-change incremental,
and an incremental after 1 % of the files changed (rewritten, same size). Then 23 more
incrementals (each after another 1 % changed) make a chain of 24 on the full, and the
newest point is restored (`restore --inline`), against a restore of a new full of the same
tree and `zstd -d | tar -x`. What each no-change incremental adds to the catalog database
and the archive folder is measured too, and so is `manage.py help` in the no-change rounds:
the start-up every command pays, after which a 2x target leaves the backup itself only the
rest of its budget. The CPU time (user + system) of the full backup and of the pipeline is
printed beside their wall times. Ratios: restic's time / ours (above 1: we are faster),
and for restores our throughput / the other's. `--repeat N` takes each backup
figure N times, ours and the other's in turn, and reports the medians (the sizes are the
last round's).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import datasets

ROOT = Path(__file__).resolve().parent.parent
CHAIN = 24


def _run(argv: list[str], env: dict, **kwargs) -> tuple[float, bytes]:
    os.sync()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, **kwargs)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed: {done.stderr.decode()[-2000:]}")
    return wall, done.stdout


def _cpu() -> float:
    """CPU seconds (user + system) of the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def manage(env: dict, *args: str) -> tuple[float, dict]:
    wall, out = _run([sys.executable, "manage.py", *args, "--json"], env, cwd=ROOT)
    return wall, json.loads(out)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _change(tree: Path, fraction: float, rng: random.Random) -> tuple[int, int]:
    """Rewrite `fraction` of the regular files (same size, new bytes); return count, bytes."""
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    chosen = rng.sample(files, max(1, int(len(files) * fraction)))
    size = 0
    for path in chosen:
        data = bytearray(path.read_bytes())
        for index in range(0, len(data), 97):
            data[index] = rng.randrange(32, 127)
        path.write_bytes(bytes(data))
        size += len(data)
    return len(chosen), size


def _compressed_size(tree: Path, paths: list[Path]) -> int:
    names = b"\0".join(os.fsencode(p.relative_to(tree)) for p in paths) + b"\0"
    done = subprocess.run(
        f"tar -C '{tree}' --null -T - -cf - | zstd -q -3 -c | wc -c",
        shell=True,
        input=names,
        capture_output=True,
        check=True,
    )
    return int(done.stdout)


def catalog_with_source(scratch: Path, tree: Path) -> dict:
    """Make a fresh SQLite catalog in `scratch` with one directory source `tree` (policy
    "bench": keep 100, no verification after a backup); return the environment to use it."""
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{scratch / 'db.sqlite3'}",
        ARCHIVE_ROOT=str(scratch / "archives"),
        STATE_DIR=str(scratch / "state"),
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    manage(env, "policy", "add", "bench", "--keep-last", "100", "--no-verify")
    manage(
        env,
        "source",
        "add",
        "tree",
        "--kind",
        "directory",
        "--location",
        str(tree),
        "--policy",
        "bench",
    )
    return env


def _rounds(repeat: int, *measures) -> list[tuple]:
    """Run the `measures` in turn `repeat` times; return each one's results, wall times as
    medians and the rest from the last round."""
    results = [[measure() for measure in measures] for _ in range(repeat)]
    summary = []
    for index in range(len(measures)):
        rounds = [result[index] for result in results]
        wall = statistics.median(result[0] for result in rounds)
        summary.append((wall, *rounds[-1][1:]))
    return summary


def bench_one(
    name: str, source: Path, scratch: Path, repeat: int = 1
) -> list[tuple[str, str, str, str]]:
    """Measure one data set; return table rows (what, ours, other, ratio)."""
    tree = scratch / "tree"
    shutil.copytree(source, tree, symlinks=True)
    env = catalog_with_source(scratch, tree)
    env.update(
        RESTIC_PASSWORD="bench",
        RESTIC_REPOSITORY=str(scratch / "restic"),
        RESTIC_CACHE_DIR=str(scratch / "restic-cache"),
    )
    _run(["restic", "init", "-q"], env)
    database = scratch / "db.sqlite3"
    archives = scratch / "archives"
    rows = []

    def restic_backup() -> tuple[float, int]:
        before = _du(scratch / "restic")
        wall, _ = _run(["restic", "backup", "-q", str(tree)], env)
        return wall, _du(scratch / "restic") - before

    def ours(*level: str) -> tuple[float, int, dict, float]:
        before, cpu = _du(archives), _cpu()
        wall, run = manage(env, "backup", "tree", "--inline", *level)
        return wall, _du(archives) - before, run, _cpu() - cpu

    def pipeline() -> tuple[float, float]:
        cpu = _cpu()
        wall, _ = _run(["bash", "-c", f"tar -cf - -C '{tree}' . | zstd -q -T0 -3 | sha256sum"], env)
        return wall, _cpu() - cpu

    def startup() -> tuple[float]:
        return (_run([sys.executable, "manage.py", "help"], env, cwd=ROOT)[0],)

    (full_wall, _, _, full_cpu), (pipe_wall, pipe_cpu) = _rounds(repeat, ours, pipeline)
    ((restic_wall, _),) = _rounds(1, restic_backup)
    rows.append(
        (
            "full backup (whole command)",
            f"{full_wall:.2f} s",
            f"pipeline {pipe_wall:.2f} s",
            f"{pipe_wall / full_wall:.2f}x pipeline",
        )
    )
    rows.append(
        (
            "  CPU time (user + system, last round)",
            f"{full_cpu:.2f} s",
            f"pipeline {pipe_cpu:.2f} s",
            f"{os.cpu_count()} cores",
        )
    )
    rows.append(
        (
            "full backup vs restic",
            f"{full_wall:.2f} s",
            f"{restic_wall:.2f} s",
            f"{restic_wall / full_wall:.2f}x",
        )
    )

    db_before = database.stat().st_size
    (wall, stored, *_), (r_wall, r_stored), (start_wall,) = _rounds(
        repeat, lambda: ours("--level", "incremental"), restic_backup, startup
    )
    db_growth = (database.stat().st_size - db_before) // repeat
    rows.append(
        (
            "no-change incremental",
            f"{wall:.2f} s, {stored:,} B",
            f"{r_wall:.2f} s, {r_stored:,} B",
            f"{r_wall / wall:.2f}x",
        )
    )
    rows.append(("  catalog growth (SQLite)", f"{db_growth:,} B", "", ""))
    # What a 2x target leaves for the backup once `python manage.py` has started.
    rows.append(
        (
            "  start-up alone (`manage.py help`)",
            f"{start_wall:.2f} s",
            f"restic / 2 = {r_wall / 2:.2f} s",
            f"{r_wall / 2 - start_wall:+.2f} s left",
        )
    )

    rng = random.Random(3)
    changes: list = []

    def change_then_ours() -> tuple[float, int, dict, float]:
        before = {p: p.stat().st_mtime_ns for p in tree.rglob("*") if p.is_file()}
        changes[:] = [_change(tree, 0.01, rng)]
        changes.append(
            [p for p in tree.rglob("*") if p.is_file() and p.stat().st_mtime_ns != before.get(p)]
        )
        return ours("--level", "incremental")

    (wall, stored, run, _), (r_wall, r_stored) = _rounds(repeat, change_then_ours, restic_backup)
    (count, size), changed = changes
    compressed = _compressed_size(tree, changed)
    manifest = Path(run["archive"]).with_name(
        Path(run["archive"]).name.split(".", 1)[0] + ".manifest.json"
    )
    bound = 1.2 * compressed + manifest.stat().st_size
    rows.append(
        (
            f"incremental, {count} files ({size:,} B) changed",
            f"{wall:.2f} s, {stored:,} B",
            f"{r_wall:.2f} s, {r_stored:,} B",
            f"{r_wall / wall:.2f}x",
        )
    )
    rows.append(
        (
            "  stored / (1.2 x compressed changes + manifest)",
            f"{stored / bound:.2f}",
            "",
            "target <= 1",
        )
    )

    for _ in range(CHAIN - 2 * repeat):
        _change(tree, 0.01, rng)
        ours("--level", "incremental")
    _change(tree, 0.01, rng)
    last = ours("--level", "incremental")[2]
    full = ours("--level", "full")[2]
    target = scratch / "restored-chain"
    chain_wall, _ = manage(env, "restore", str(last["id"]), "--to", str(target), "--inline")
    shutil.rmtree(target)
    full_restore, _ = manage(env, "restore", str(full["id"]), "--to", str(target), "--inline")
    shutil.rmtree(target)
    target.mkdir()
    plain, _ = _run(
        ["bash", "-c", f"zstd -d -c '{full['archive']}' | tar -xf - -C '{target}'"], env
    )
    shutil.rmtree(target)
    rows.append(
        (
            f"restore newest of a chain of {CHAIN} incrementals",
            f"{chain_wall:.2f} s",
            f"full {full_restore:.2f} s",
            f"{full_restore / chain_wall:.2f}x full",
        )
    )
    rows.append(
        (
            "restore a full (whole command)",
            f"{full_restore:.2f} s",
            f"zstd -d | tar -x {plain:.2f} s",
            f"{plain / full_restore:.2f}x pipeline",
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table per data set."""
    parser = argparse.ArgumentParser(prog="python -m bench.incremental")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=["stdlib", "small"])
    parser.add_argument("--repeat", type=int, default=1, help="rounds per backup figure")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 5:
        parser.error("--repeat takes 1 to 5 (the chain has 24 backups in all)")
    if shutil.which("restic") is None:
        print("restic is not installed (Debian package restic): skipped.")
        return 0
    for name in args.only:
        source = datasets.DATASETS[name](args.quick)
        with tempfile.TemporaryDirectory(prefix="bench-incremental-", dir=datasets.ROOT) as scratch:
            rows = bench_one(name, source, Path(scratch), args.repeat)
        print(f"\n{name} ({'quick' if args.quick else 'full'} data set)")
        print(f"| {'what':50} | {'ours':>24} | {'other':>28} | {'ratio':>16} |")
        print(f"|{'-' * 52}|{'-' * 26}:|{'-' * 30}:|{'-' * 18}:|")
        for what, mine, other, ratio in rows:
            print(f"| {what:50} | {mine:>24} | {other:>28} | {ratio:>16} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
