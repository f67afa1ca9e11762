"""Run every benchmark of this package, one after the other: `python -m bench [--quick]`.

Each module here with a `main(argv)` is a benchmark (backup, restore, pages, ...); they
are found, not listed, so a new one joins `make bench` by existing. `--quick` is passed
on to each (small data sets, a smoke test); `--only NAME ...` picks some of them.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

# Helpers, not benchmarks.
NOT_BENCHMARKS = {"datasets", "__main__"}


def benchmarks() -> list[str]:
    """Return the names of the benchmark modules, in a stable order."""
    folder = Path(__file__).resolve().parent
    names = [info.name for info in pkgutil.iter_modules([str(folder)])]
    return sorted(name for name in names if name not in NOT_BENCHMARKS)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; the exit status is the worst of theirs."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small data sets (smoke test)")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark module names")
    args = parser.parse_args(argv)
    names = args.only or benchmarks()
    status = 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        if not hasattr(module, "main"):
            continue
        print(f"== bench.{name}", flush=True)
        started = time.monotonic()
        result = module.main(["--quick"] if args.quick else [])
        status = max(status, result or 0)
        print(f"== bench.{name}: {time.monotonic() - started:.0f} s\n", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
