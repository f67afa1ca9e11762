"""Memory stays flat however big the source: the stream is never held, only passed on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIMIT_MB = 120

CHILD = r"""
import json, sys
from pathlib import Path
from backups.engine.backup import BackupRequest, run_backup
from backups.engine.hooks import Hooks
result = run_backup(
    BackupRequest(kind="directory", location=sys.argv[1], dest_dir=Path(sys.argv[2]), stem="m-1"),
    Hooks(),
)
# VmHWM is this process's own peak since exec; wait4's ru_maxrss would also count the
# parent's resident set, which a forked child starts with.
peak_kib = next(
    int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")
)
print(json.dumps({"bytes": result.bytes, "size": result.size, "peak_kib": peak_kib}))
"""


def peak_rss_of_backup(source: Path, dest: Path) -> tuple[float, dict]:
    """Back up `source` in a child process; return its peak RSS in MiB and its result."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(source), str(dest)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    output = child.stdout.read()
    assert child.wait() == 0
    result = json.loads(output)
    return result["peak_kib"] / 1024, result


@pytest.mark.slow
def test_a_1_gib_source_stays_under_the_memory_limit(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    text = (b"some text that compresses, line after line\n" * 400_000)[: 16 << 20]
    with open(source / "mixed.bin", "wb") as handle:
        for _ in range(32):
            handle.write(os.urandom(16 << 20))
        for _ in range(32):
            handle.write(text)
    rss, result = peak_rss_of_backup(source, tmp_path / "dest")
    assert result["bytes"] == 1 << 30
    assert rss < LIMIT_MB, f"peak RSS {rss:.0f} MiB"


@pytest.mark.manual
def test_a_10_gib_source_stays_under_the_memory_limit(tmp_path):
    # About a minute of reading and hashing: only when asked for (-m manual).
    source = tmp_path / "src"
    source.mkdir()
    with open(source / "sparse.bin", "wb") as handle:
        handle.truncate(10 << 30)  # a sparse file: 10 GiB to read, no disk used
    rss, result = peak_rss_of_backup(source, tmp_path / "dest")
    assert result["bytes"] == 10 << 30
    assert rss < LIMIT_MB, f"peak RSS {rss:.0f} MiB"
