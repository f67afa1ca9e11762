"""Benchmark data sets, created once under var/bench/data and reused.

- `bigfile`: one 1 GiB file, half random bytes (incompressible), half text.
- `stdlib`: a copy of the Python standard library (`os.path.dirname(os.__file__)`, without
  its site-packages, which is not the standard library and differs between machines).
- `small`: 50,000 files of 1-8 KiB of text-like data in 100 folders.

`--quick` variants are small versions of the same shapes, for smoke tests. A data set is
complete when the `<name>.complete` marker beside it exists; an interrupted creation is redone.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "var" / "bench"
DATA = ROOT / "data"
MARKER = ".complete"
MiB = 1 << 20

_VOCABULARY = (
    "backup restore archive manifest checksum policy retention schedule worker queue "
    "snapshot database volume cluster namespace container tarball compress stream "
    "record offset header member payload source target verify drill recovery point "
    "objective time the of and to in is that for it as with was on be at by this"
)
WORDS = _VOCABULARY.split()


def _text(rng: random.Random, size: int) -> bytes:
    """Return `size` bytes of word salad: compressible like real text, not trivially."""
    parts: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + f" {rng.random():.6f}\n"
        parts.append(line)
        length += len(line)
    return "".join(parts).encode()[:size]


def _build(name: str, quick: bool, create: Callable[[Path], None]) -> Path:
    root = DATA / (name + ("-quick" if quick else ""))
    # The marker sits beside the data, not in it, so backups of the set do not include it.
    marker = root.with_name(root.name + MARKER)
    if marker.exists() and root.is_dir():
        return root
    if root.exists():
        shutil.rmtree(root)
    staging = root.with_name(root.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    create(staging)
    os.rename(staging, root)
    marker.touch()
    return root


def bigfile(quick: bool = False) -> Path:
    """Return the folder holding one big file: half random, half text (1 GiB, quick 64 MiB)."""
    size = (64 if quick else 1024) * MiB

    def create(folder: Path) -> None:
        rng = random.Random(1)
        text = _text(rng, 16 * MiB)
        with open(folder / "big.bin", "wb") as out:
            for _ in range(size // 2 // (16 * MiB) or 1):
                out.write(os.urandom(16 * MiB))
            written = out.tell()
            while written < size:
                piece = text[: size - written]
                out.write(piece)
                written += len(piece)

    return _build("bigfile", quick, create)


def stdlib(quick: bool = False) -> Path:
    """Return a copy of the Python standard library tree (quick: its json and email)."""
    source = Path(os.path.dirname(os.__file__))

    def create(folder: Path) -> None:
        if quick:
            for package in ("json", "email", "asyncio"):
                shutil.copytree(source / package, folder / package, symlinks=True)
            return
        shutil.copytree(
            source,
            folder / "lib",
            symlinks=True,
            ignore=shutil.ignore_patterns("site-packages"),
            ignore_dangling_symlinks=True,
        )

    return _build("stdlib", quick, create)


def small_files(quick: bool = False) -> Path:
    """Return a folder of 50,000 files of 1-8 KiB (quick: 2,000) in 100 sub-folders."""
    count = 2_000 if quick else 50_000

    def create(folder: Path) -> None:
        rng = random.Random(2)
        pool = _text(rng, 8 * MiB)
        for index in range(count):
            sub = folder / f"d{index % 100:03d}"
            if index < 100:
                sub.mkdir()
            size = rng.randint(1024, 8192)
            start = rng.randrange(0, len(pool) - size)
            (sub / f"f{index:06d}.txt").write_bytes(pool[start : start + size])

    return _build("small", quick, create)


def million(quick: bool = False) -> Path:
    """Return a folder of 1,000,000 files of a few bytes (quick: 20,000) in 1,000 folders.

    Not in DATASETS: only the catalog-growth benchmark wants a tree this wide.
    """
    count = 20_000 if quick else 1_000_000

    def create(folder: Path) -> None:
        for index in range(count):
            sub = folder / f"d{index % 1000:03d}"
            if index < 1000:
                sub.mkdir()
            (sub / f"f{index:07d}").write_bytes(b"%d\n" % index)

    return _build("million", quick, create)


DATASETS: dict[str, Callable[[bool], Path]] = {
    "bigfile": bigfile,
    "stdlib": stdlib,
    "small": small_files,
}


def ensure_all(quick: bool = False) -> dict[str, Path]:
    """Create the missing data sets and return every data set's folder by name."""
    return {name: make(quick) for name, make in DATASETS.items()}


def tree_size(root: Path) -> tuple[int, int]:
    """Return (files, bytes) of the regular files under `root`, not following links."""
    files = size = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                files += 1
                size += os.lstat(path).st_size
    return files, size
