"""From a real shell: bad usage prints one `error:` line and exits 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def manage(tmp_path):
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)

    def run(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )

    return run


@pytest.mark.parametrize(
    "args",
    [
        ["policy", "add", "p", "--rpo", "soon"],
        ["source", "add", "s", "--kind", "directory", "--location", "rel"],
        ["source", "add", "s", "--kind", "tape", "--location", "/tmp"],
        ["source"],
    ],
)
def test_bad_usage_prints_one_error_line_and_exits_2(manage, args):
    result = manage(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
