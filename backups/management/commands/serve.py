"""`serve`: run the web server and a django-q2 cluster together until Ctrl-C.

For `make run`. Both children die with this process (PR_SET_PDEATHSIG), and Ctrl-C or
SIGTERM stops both cleanly, so no worker is left behind: each child's whole process group
is signalled, as a service manager does, so a worker in the middle of a run cancels it
and exits. Production runs the two as separate services (see README).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if `serve` is killed, even with SIGKILL, the kernel
    # sends SIGTERM to the child, so no orphaned web server or worker survives.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Command(BaseCommand):
    help = "Run the dashboard and the workers together (development)."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--no-workers", action="store_true")

    def handle(self, *args, **options):
        python = sys.executable
        commands = [[python, "manage.py", "runserver", "--noreload", options["addr"]]]
        if not options["no_workers"]:
            commands.append([python, "manage.py", "qcluster"])
        children = [
            # A new session keeps the terminal's Ctrl-C away from the children: this
            # process sends one SIGTERM to each child's process group and waits for them.
            subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent)
            for cmd in commands
        ]
        self.stdout.write(
            f"Serving http://{options['addr']} with {len(children) - 1} worker cluster(s). "
            "Press Ctrl-C to stop."
        )
        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping and all(child.poll() is None for child in children):
                time.sleep(0.2)
        finally:
            self._stop(children)
        failed = [child for child in children if child.returncode not in (0, -15, None)]
        if not stopping and failed:
            self.stderr.write(f"A child process exited with status {failed[0].returncode}.")
            sys.exit(1)
        self.stdout.write("Stopped.")

    def _stop(self, children: list[subprocess.Popen]) -> None:
        for child in children:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
            # A worker may outlive its cluster's master by the second it takes to end its run.
            while _signal_group(child, 0) and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_group(child, signal.SIGKILL)


def _signal_group(child: subprocess.Popen, sig: int) -> bool:
    """Send `sig` to the child's process group; return whether any process was left in it."""
    # Each child leads its own session, so its process group id is its pid.
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        return False
    return True
