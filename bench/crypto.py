"""Benchmark what age encryption costs a backup and a restore, on 1 GiB of mixed data.

    .venv/bin/python -m bench.crypto [--quick] [--repeat N] [--modes thread process]

The data set is bench.datasets' `bigfile` (half random bytes, half text), read from a warm
page cache. Each pipeline runs in a child process, measured alone with wait4() (wall, and
CPU of the child and everything it started), N times, interleaved:

- backup: read the file, sha256 it (a backup hashes every file for its manifest), compress
  with the engine's compressor (zstd level 3, threads=-1), [encrypt,] sha256 the stored
  bytes (the `.sha256` sidecar) and write them;
- restore: read the stored file, sha256 it, [decrypt,] decompress with the engine's
  decompressor, sha256 the payload (a restore checks every file against its manifest).

Stored files go to a tmpfs (/dev/shm) when there is one, so the disk's noise stays out of
a comparison about CPU. The table shows each side's best run, the encrypted side's
overhead against the plain one (target: at most 20 %), and the median of per-run ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import datasets

TARGET_OVERHEAD = 0.20
PLAIN = "plain"
CHUNK = 1 << 20


@dataclass
class Measure:
    """One timed run: wall and CPU seconds (all, and the pipeline's own process), peak RSS."""

    wall: float
    cpu: float
    own_cpu: float
    rss_mb: float


def scratch() -> Path:
    """Return where stored files go: a tmpfs when there is one."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else datasets.ROOT / "out"
    folder = base / f"bench-crypto-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _report(**values) -> None:
    """Print the child's result: its peak RSS and CPU time, and `values`."""
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    own = usage.ru_utime + usage.ru_stime
    print(json.dumps({"peak_kib": peak, "own_cpu": own, **values}))


def _child_backup(mode: str, source: str, stored: str, recipient: str) -> None:
    from backups.engine.backup import _HashingWriter
    from backups.engine.compression import compressor
    from backups.engine.crypto import EncryptingWriter

    payload = hashlib.sha256()
    with open(source, "rb", buffering=0) as src, open(stored, "wb") as out:
        hashed = _HashingWriter(out)
        encrypted = None
        target = hashed
        if mode != PLAIN:
            encrypted = EncryptingWriter(hashed, [recipient], mode=mode)
            target = encrypted
        stream = compressor("zstd", target)
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while count := src.readinto(buffer):
            payload.update(view[:count])
            stream.write(view[:count])
        stream.close()
        if encrypted is not None:
            encrypted.close()
    _report(size=hashed.size)


def _child_restore(mode: str, stored: str, key: str) -> None:
    from backups.engine.compression import decompressor
    from backups.engine.crypto import DecryptingReader, load_identities
    from backups.engine.restore.reader import _HashingReader

    payload = hashlib.sha256()
    with open(stored, "rb", buffering=0) as file:
        hashing = _HashingReader(file)
        raw = hashing
        plain = None
        if mode != PLAIN:
            plain = DecryptingReader(hashing, load_identities([key]), mode=mode)
            raw = plain
        reader = decompressor("zstd", raw)
        total = 0
        while data := reader.read(CHUNK):
            payload.update(data)
            total += len(data)
        if plain is not None:
            plain.close()
    _report(bytes=total)


def _timed(argv: list[str]) -> tuple[Measure, dict]:
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=datasets.ROOT.parent.parent)
    output = child.stdout.read()
    _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[3:6]} failed")
    result = json.loads(output)
    cpu = usage.ru_utime + usage.ru_stime
    return Measure(wall, cpu, result["own_cpu"], result["peak_kib"] / 1024), result


def _child_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.crypto", "--child", *args]


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table; the status is 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB")
    parser.add_argument("--repeat", type=int, default=None, help="runs per side (default 3)")
    parser.add_argument("--modes", nargs="*", default=["thread", "process"])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        (_child_backup if kind == "backup" else _child_restore)(*rest)
        return 0

    import pyrage.x25519

    repeat = args.repeat or (1 if args.quick else 3)
    source = datasets.bigfile(args.quick) / "big.bin"
    size = source.stat().st_size
    subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)
    folder = scratch()
    identity = pyrage.x25519.Identity.generate()
    key = folder / "key.txt"
    key.touch(mode=0o600)
    key.write_text(f"{identity}\n")
    recipient = str(identity.to_public())
    sides = [PLAIN, *args.modes]
    stored = {mode: folder / f"big.tar.zst{'' if mode == PLAIN else '.age'}" for mode in sides}
    runs: dict[tuple[str, str], list[Measure]] = {}
    try:
        for index in range(repeat):
            for mode in sides:
                measure, _ = _timed(
                    _child_argv("backup", mode, str(source), str(stored[mode]), recipient)
                )
                runs.setdefault(("backup", mode), []).append(measure)
            for mode in sides:
                measure, result = _timed(_child_argv("restore", mode, str(stored[mode]), str(key)))
                if result["bytes"] != size:
                    raise SystemExit(f"restore {mode} gave {result['bytes']} bytes, not {size}")
                runs.setdefault(("restore", mode), []).append(measure)
            print(f"  run {index + 1}/{repeat} done", file=sys.stderr)
        stored_mb = {mode: stored[mode].stat().st_size / 1e6 for mode in sides}
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return print_table(runs, sides, size, stored_mb, repeat, args.quick)


def print_table(runs, sides, size, stored_mb, repeat: int, quick: bool) -> int:
    """Print one block per pipeline; return 1 when an encrypted side misses the target."""
    print()
    print(
        f"age encryption benchmark ({'quick, ' if quick else ''}{size / 2**20:.0f} MiB of "
        f"mixed data, best of {repeat}, {os.cpu_count()} CPUs)"
    )
    header = (
        f"{'pipeline':<8} {'side':<8} {'wall s':>7} {'MB/s':>6} {'CPU s':>6} {'own s':>6} "
        f"{'RSS MB':>7} "
        f"{'stored MB':>9} {'overhead':>8} {'median':>7} {'CPU +':>6}"
    )
    print(header)
    print("-" * len(header))
    missed = False
    for pipeline in ("backup", "restore"):
        base = runs[(pipeline, PLAIN)]
        best_base = min(base, key=lambda m: m.wall)
        for mode in sides:
            measures = runs[(pipeline, mode)]
            best = min(measures, key=lambda m: m.wall)
            extra = ""
            if mode != PLAIN:
                overhead = best.wall / best_base.wall - 1
                median = statistics.median(
                    m.wall / b.wall - 1 for m, b in zip(measures, base, strict=True)
                )
                cpu = min(m.cpu for m in measures) / min(b.cpu for b in base) - 1
                verdict = "ok" if overhead <= TARGET_OVERHEAD else "MISS"
                missed |= verdict == "MISS"
                extra = f"{overhead:>+8.0%} {median:>+7.0%} {cpu:>+6.0%} {verdict}"
            print(
                f"{pipeline if mode == PLAIN else '':<8} {mode:<8} {best.wall:>7.2f} "
                f"{size / 1e6 / best.wall:>6.0f} {best.cpu:>6.2f} {best.own_cpu:>6.2f} "
                f"{max(m.rss_mb for m in measures):>7.0f} {stored_mb[mode]:>9.1f} {extra}"
            )
    print(
        f"\noverhead: best encrypted wall / best plain wall - 1 (target <= "
        f"{TARGET_OVERHEAD:.0%}); median: of the per-run overheads; CPU +: extra CPU seconds "
        "(child processes included); own: CPU of the pipeline's process alone (without the\n"
        "crypto child), what stays on the critical path when another core is free.\n"
        "thread: pyrage in a thread (it holds the GIL while it works); process: pyrage in a "
        "child process, on another core."
    )
    if quick:
        print("(quick: not meaningful)")
        return 0
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
