"""Back up a path inside a Kubernetes pod through `kubectl exec ... tar`.

The location is `NAMESPACE/POD[/CONTAINER]:/ABS/PATH`. tar runs inside the pod and writes
to kubectl's stdout; the stream goes through a TarScanner, which hashes each file for the
manifest and drops excluded paths and special files, on its way to the compressor. Any
failure (no kubectl, no pod, no path, tar failing in the pod even after data has flowed)
fails the run with kubectl's own message, and nothing is published.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ArchiveError, SourceError
from ..locations import KUBERNETES, parse_pod_path
from ..manifest import DIR, FILE, HARDLINK, SYMLINK
from ..tarstream import Member, TarScanner
from .base import (
    PLAN_LIST_LIMIT,
    Command,
    Excludes,
    Output,
    Plan,
    SourceDriver,
    entry_for,
)

_KEPT_TYPES = (FILE, DIR, SYMLINK, HARDLINK)


def parse_kubernetes_location(location: str) -> tuple[str, str, str | None, str]:
    """Split `NAMESPACE/POD[/CONTAINER]:/ABS/PATH`; raise SourceError if it is malformed."""
    try:
        pod = parse_pod_path(location)
    except ValueError as error:
        raise SourceError(str(error)) from None
    return pod.namespace, pod.pod, pod.container, pod.path


def exec_argv(location: str, command: Sequence[str], *, stdin: bool = False) -> list[str]:
    """Return the kubectl argv that runs `command` in the location's pod (and container)."""
    namespace, pod, container, _path = parse_kubernetes_location(location)
    argv = ["kubectl", "exec"]
    if stdin:
        argv.append("-i")
    argv += ["-n", namespace, pod]
    if container:
        argv += ["-c", container]
    return argv + ["--", *command]


class KubernetesDriver(SourceDriver):
    """A folder inside a pod."""

    def __init__(self, location: str, *, excludes: Sequence[str] = ()) -> None:
        self.namespace, self.pod, self.container, self.path = parse_kubernetes_location(location)
        self.location = location
        self.excludes = Excludes(excludes)

    def _argv(self) -> list[str]:
        return exec_argv(self.location, ["tar", "-cf", "-", "-C", self.path, "."])

    def _run(self, out: Output | None, plan: Plan | None) -> None:
        """Stream the pod's tar through a scanner, into `out` or only counted into `plan`."""
        excludes = self.excludes
        excluded_dirs: tuple[str, ...] = ()
        files = 0
        total = 0

        def decide(member: Member) -> bool:
            nonlocal files, total, excluded_dirs
            path = member.path
            if path == ".":
                return True
            # tar in the pod does not know our globs: a folder's contents go with it.
            if excluded_dirs and path.startswith(excluded_dirs):
                return False
            if excludes and excludes(path, path.rsplit("/", 1)[-1]):
                if member.type == DIR:
                    excluded_dirs += (path + "/",)
                if plan is not None:
                    plan.excluded_count += 1
                    if len(plan.excluded) < PLAN_LIST_LIMIT:
                        plan.excluded.append(path)
                return False
            if member.type not in _KEPT_TYPES:
                message = f"{path}: skipped, a {member.type} special file cannot be backed up"
                if out is not None:
                    out.warn(message)
                else:
                    plan.skipped.append(message)
                return False
            if member.type == FILE:
                files += 1
                total += member.size
            return True

        if out is not None:
            add = out.add

            def on_member(member: Member) -> None:
                entry = entry_for(member)
                if entry is not None:
                    add(entry)

            scanner = TarScanner(decide=decide, on_member=on_member, sink=out.write)
            check = out.hooks.check

            def consume(chunk: memoryview) -> None:
                scanner.feed(chunk)
                out.advance(bytes_done=scanner.payload_bytes, files_done=files)

        else:
            scanner = TarScanner(decide=decide)
            consume = scanner.feed

            def check() -> None:
                pass

        what = f"the pod path {self.location}"
        with Command(self._argv(), what=what) as command:
            try:
                command.pump(consume, check)
            except ArchiveError as error:
                command.kill()
                lines = command.stderr_lines()
                raise SourceError(
                    f"The tar stream from {self.location} is not valid ({error}); "
                    + ("; ".join(lines[-5:]) or "kubectl gave no reason")
                ) from None
            status = command.wait(check)
            if status != 0:
                raise command.failure(status)
            if out is not None:
                for line in command.stderr_lines():
                    out.hooks.log(f"kubectl: {line}")
            try:
                scanner.close()
            except ArchiveError as error:
                raise SourceError(
                    f"The tar stream from {self.location} ended early ({error}); "
                    "kubectl exited without an error."
                ) from None
        if plan is not None:
            plan.files, plan.bytes = files, total

    def stream(self, out: Output) -> None:
        """Stream the pod path into `out` through kubectl exec and tar."""
        self._run(out, None)

    def plan(self) -> Plan:
        """Read the pod path's tar stream once, counting what it holds; write nothing."""
        plan = Plan(kind=KUBERNETES, location=self.location)
        self._run(None, plan)
        plan.notes.append("counted by reading the pod's tar stream")
        return plan
