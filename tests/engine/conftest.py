"""Fixtures for engine tests: a source tree with every awkward kind of entry."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

MTIME = 1_600_000_000

# Every name here has tripped up some tar implementation: too long for ustar, not UTF-8,
# a newline, a name that only fits with the ustar prefix field.
LONG_DIR = "d" * 120 + "/" + "e" * 120
LONG_FILE = LONG_DIR + "/" + "f" * 100 + ".txt"
NON_UTF8 = os.fsdecode(b"caf\xe9-latin1.txt")
NEWLINE = "new\nline.txt"


def make_tree(root: Path, *, seed: int = 7) -> Path:
    """Create a small tree with long, non-UTF-8 and odd names, links, modes, empty dirs."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "small.txt": b"hello, world\n",
        "empty.bin": b"",
        "b511.bin": rng.randbytes(511),
        "b512.bin": rng.randbytes(512),
        "b513.bin": rng.randbytes(513),
        "sub/random.bin": rng.randbytes(300_000),
        "sub/text.txt": b"line of text\n" * 5000,
        "zo\u00eb.txt": b"unicode name \xc3\xa9\n",
        NON_UTF8: b"latin-1 name\n",
        NEWLINE: b"a newline in the name\n",
        LONG_FILE: b"deep\n",
        "private.key": b"secret\n",
        "run.sh": b"#!/bin/sh\necho hi\n",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "private.key").chmod(0o600)
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    (root / "sub" / "nested-empty").mkdir()
    (root / "locked").mkdir(mode=0o750)
    (root / "locked").chmod(0o750)
    os.symlink("small.txt", root / "link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("/etc/hostname", root / "absolute")
    os.link(root / "small.txt", root / "hard")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))
    return root


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A source directory with every awkward kind of entry."""
    return make_tree(tmp_path / "tree")
