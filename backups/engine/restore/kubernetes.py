"""Restore into a pod: verify the whole archive, then stream it to `tar -x` through kubectl exec."""

from __future__ import annotations

import os

from ..locations import PodPath, parse_pod_path
from .children import ProcessSink
from .job import RestoreJob
from .request import check_target, selection_for


def kubectl_binary() -> str:
    """Return the kubectl command: $KUBECTL, else kubectl on PATH."""
    return os.environ.get("KUBECTL") or "kubectl"


def kubectl_extract_argv(pod: PodPath) -> list[str]:
    """Return the argv that runs `tar -x` in the pod, reading the archive from stdin."""
    argv = [kubectl_binary(), "exec", "-i", "-n", pod.namespace, pod.pod]
    if pod.container:
        argv += ["-c", pod.container]
    return argv + ["--", "tar", "-xf", "-", "-C", pod.path]


def restore_pod(job: RestoreJob) -> str:
    """Verify the archive, then send what passes to the pod; return the pod path."""
    request = job.request
    check_target(request, job.manifest)
    pod = parse_pod_path(request.target)
    selection = selection_for(request, job.manifest)
    # A pod's files cannot be staged and swapped: the whole archive is verified first, so a
    # damaged or altered archive sends nothing.
    expected = job.expected()
    job.stream(job.member_filter(f"verifying {job.archive.name}", selection), expected)
    job.passed_checksum(expected)
    filter_ = job.member_filter(f"sending to {pod}", selection)

    def send() -> None:
        # Unlike a local folder, a pod has no staging: what was sent before a failure stays.
        job.deadline.outcome = f"{pod} may hold part of the archive; restore it again."
        sink = ProcessSink(
            kubectl_extract_argv(pod), what=f"kubectl exec into {pod}", deadline=job.deadline
        )
        job.stream(filter_, expected, sink=sink)

    job.publish(send)
    job.passed_contents(filter_)
    return str(pod)
