"""Running management commands in tests, as a script would: their JSON, their exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

from django.core.management import CommandError, call_command

ROOT = Path(__file__).resolve().parent.parent


def call_json(*args, expect: int | tuple[int, ...] = 0) -> dict:
    """Run a command with --json, check its exit status is `expect` (or one of them), and
    return the object it printed ({} when it printed nothing)."""
    out = StringIO()
    try:
        call_command(*args, "--json", stdout=out, stderr=StringIO())
        code = 0
    except CommandError as error:
        code = error.returncode
    except SystemExit as exit_:
        code = exit_.code
    assert code in (expect if isinstance(expect, tuple) else (expect,)), out.getvalue()
    return json.loads(out.getvalue()) if out.getvalue() else {}


def quiet(*args) -> str:
    """Run a command, keeping its output out of the test's; return what it printed."""
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def manage_shell(code: str, database: Path) -> str:
    """Run `code` in a fresh `manage.py shell` process on the SQLite file `database`, with
    nothing of the test's environment; return what it printed."""
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{database}"},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout
