"""manage.py's start-up: what it does to be quick must not change how a command runs."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_command_runs_with_the_garbage_collector_on_and_start_up_frozen(tmp_path):
    # The collector is off while Django sets up: a command (a backup of millions of files,
    # the workers) must find it on again, with set-up's objects out of its way.
    probe = "import gc; print(gc.isenabled(), gc.get_freeze_count())"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", probe],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"},
        capture_output=True,
        text=True,
        check=True,
    )
    enabled, frozen = done.stdout.split()
    assert enabled == "True"
    assert int(frozen) > 10_000
