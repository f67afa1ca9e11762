"""manage.py's start-up: what it does to be quick must not change how a command runs."""

import subprocess
import sys
from pathlib import Path

from tests.cli_helpers import manage_shell

ROOT = Path(__file__).resolve().parent.parent


def test_a_command_runs_with_the_garbage_collector_on_and_start_up_frozen(tmp_path):
    # The collector is off while Django sets up: a command (a backup of millions of files,
    # the workers) must find it on again, with set-up's objects out of its way.
    probe = "import gc; print(gc.isenabled(), gc.get_freeze_count())"
    enabled, frozen = manage_shell(probe, tmp_path / "db.sqlite3").split()
    assert enabled == "True"
    assert int(frozen) > 10_000


def test_the_cron_parser_loads_without_starting_file(tmp_path):
    # croniter on its own runs file(1) when imported (platform.architecture); every command
    # loads it with the settings, so ours keeps that process from starting.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "file-ran"
    fake = bin_dir / "file"
    fake.write_text(f"#!/bin/sh\ntouch '{marker}'\necho 'ELF 64-bit LSB executable'\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

    def load(code: str) -> None:
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)

    load("import croniter")
    assert marker.exists(), "the probe does not see croniter's file(1)"
    marker.unlink()
    load(
        "import platform; asks = platform.architecture; import backups.engine.durations; "
        "assert platform.architecture is asks"
    )
    assert not marker.exists()
