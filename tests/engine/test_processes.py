"""Naming a process so that its death on this host is seen at once, with real processes."""

import dataclasses
import os
import subprocess

from backups.engine.processes import process_gone, start_ticks, this_process


def spawn_named():
    """Start a real process and return it with the name it would have recorded for itself."""
    child = subprocess.Popen(["sleep", "60"])
    here = this_process()
    return child, dataclasses.replace(here, pid=child.pid, started=start_ticks(child.pid))


def test_a_running_process_is_not_gone():
    child, name = spawn_named()
    try:
        assert name.started is not None
        assert process_gone(name) is None
    finally:
        child.kill()
        child.wait()


def test_a_killed_process_is_gone_even_before_it_is_waited_for():
    child, name = spawn_named()
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, still a zombie
    assert process_gone(name) == f"pid {child.pid} on {name.host} is no longer running"
    child.wait()
    assert process_gone(name) == f"pid {child.pid} on {name.host} is no longer running"


def test_a_pid_now_held_by_a_process_started_at_another_time_is_gone():
    # This process holds the pid now; the name recorded a process that started earlier.
    here = this_process()
    earlier = dataclasses.replace(here, started=here.started - 1)
    assert "that pid now belongs to another process" in process_gone(earlier)


def test_a_process_from_before_this_host_booted_is_gone():
    here = this_process()
    inode = here.pid_ns.split(":")[1]
    before_boot = dataclasses.replace(here, pid_ns=f"00000000-0000-0000-0000-000000000000:{inode}")
    where = f"pid {here.pid} on {here.host}"
    assert process_gone(before_boot) == f"{here.host} has restarted since {where} started"


def test_nothing_is_told_of_a_process_on_another_host_or_in_another_pid_namespace():
    child, name = spawn_named()
    child.kill()
    child.wait()
    boot = name.pid_ns.split(":")[0]
    assert process_gone(dataclasses.replace(name, host="elsewhere")) is None
    # Same kernel, another container that happens to share the host name.
    assert process_gone(dataclasses.replace(name, pid_ns=f"{boot}:1")) is None
