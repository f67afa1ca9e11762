"""The django-q2 cluster and its workers, stopping cleanly when a host shuts down.

A service manager stops a service by sending SIGTERM to every process of it at once
(systemd's default, a whole cgroup; a terminal's or a container runtime's process group
alike). django-q2's sentinel, pusher, monitor and idle workers die of it at once. What
must not happen: a worker dying in the middle of a run, which would stay `running` with
its temporary files until the reaper, and the cluster's master waiting forever for a
sentinel that is already dead. So a worker executing a run stops it cleanly first, and
the master stops without waiting on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from django_q.cluster import Cluster as QCluster

SHUTDOWN_REASON = (
    "Cancelled: its worker was shut down (SIGTERM) while it ran; nothing was published. "
    "A scheduled backup is queued again for another worker."
)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[threading.Event]:
    """Turn SIGTERM into an Event for the duration of a task, then let it end the process.

    The task passes the Event to the run it executes, which stops at its next check and
    ends `cancelled`, its temporary files removed; once the task is over, the signal is
    delivered again to whatever handled it before (a worker dies of it, as it was told).
    Outside the main thread no handler can be installed: the Event then stays unset.
    """
    interrupt = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: interrupt.set())
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if interrupt.is_set():
            os.kill(os.getpid(), signal.SIGTERM)


class Cluster(QCluster):
    """django-q2's cluster, whose master stops at once when its sentinel died with it."""

    def sig_handler(self, signum, frame):
        # QCluster.stop() sets the stop event, and a multiprocessing Event waits for every
        # process sleeping on it to wake: a sentinel killed by the same SIGTERM never does.
        # Stop from a thread, and wait here for the sentinel itself, dead or stopping.
        if self.sentinel is None:
            return
        threading.Thread(target=self.stop, name="cluster-stop", daemon=True).start()
        self.sentinel.join()
