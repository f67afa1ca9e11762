"""Name a process so that another one can later tell, at once, that it is gone.

A pid alone is not enough: pids are reused, they only mean something inside one PID
namespace (two containers may share a host name), and they start over when the host
boots. A process is named by its host, its pid, its start time (clock ticks after boot,
field 22 of /proc/PID/stat) and its PID namespace, itself named by the kernel's boot id
and the namespace's inode. Where /proc cannot tell (another OS), the start time and the
namespace are None and the answer is always "cannot tell".
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from dataclasses import dataclass

BOOT_ID = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class ProcessName:
    """Where a process runs and which one it is."""

    host: str
    pid: int
    started: int | None
    pid_ns: str


def start_ticks(pid: int) -> int | None:
    """Return when process `pid` started (clock ticks after boot); None if it is gone.

    A zombie (dead, not yet waited for by its parent) counts as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last one.
    fields = text.rsplit(b")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X") or not fields[19].isdigit():
        return None
    return int(fields[19])


def pid_namespace() -> str:
    """Return a name for this process's PID namespace, unique across hosts and boots."""
    try:
        with open(BOOT_ID) as handle:
            boot = handle.read().strip()
        inode = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}:{inode}"


def this_process() -> ProcessName:
    """Return the name of the calling process."""
    pid = os.getpid()
    return ProcessName(
        host=socket.gethostname(), pid=pid, started=start_ticks(pid), pid_ns=pid_namespace()
    )


def process_gone(owner: ProcessName, here: ProcessName | None = None) -> str | None:
    """Say why process `owner` is certainly gone, seen from `here`; None when it may live.

    Only a process on this host can be checked: it is gone when its pid no longer exists
    or now belongs to a process that started at another time, or when the host booted
    again since it started. On another host, or in another PID namespace of this one,
    nothing can be told from here.
    """
    here = here or this_process()
    if owner.host != here.host or not owner.pid_ns or not here.pid_ns:
        return None
    where = f"pid {owner.pid} on {owner.host}"
    if owner.pid_ns != here.pid_ns:
        owner_boot, here_boot = owner.pid_ns.split(":")[0], here.pid_ns.split(":")[0]
        if owner_boot != here_boot:
            return f"{owner.host} has restarted since {where} started"
        return None
    started = start_ticks(owner.pid)
    if started is None:
        return f"{where} is no longer running"
    if owner.started is not None and started != owner.started:
        return f"{where} is no longer running; that pid now belongs to another process"
    return None


def kill_group(child: subprocess.Popen) -> None:
    """Kill a child started in its own session, with everything it started; never raises."""
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except OSError:
        with contextlib.suppress(OSError):
            child.kill()
