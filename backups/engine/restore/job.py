"""The state one restore shares between its steps, and the steps every kind takes."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from ..atomic import format_bytes
from ..errors import ArchiveError, Cancelled
from ..hooks import Hooks
from ..safety import Selection
from .children import ProcessSink
from .contents import member_key
from .deadline import Deadline
from .extract import stream_into, tar_env, tar_extract_argv
from .hardlink_helpers import drop_helpers
from .journal import BESIDE, Journal
from .member_filter import MemberFilter
from .progress import ProgressMeter
from .reader import expected_sha256
from .recovery import recover_interrupted
from .request import RestoreRequest


class RestoreJob:
    """The state one restore shares between its steps."""

    def __init__(self, request: RestoreRequest, hooks: Hooks) -> None:
        self.request = request
        self.hooks = hooks
        self.archive = request.archive_file()
        self.manifest = request.load_manifest()
        self.deadline = Deadline(request.timeout_s)
        self.warnings: list[str] = []
        self.checks: list[dict] = []
        self.files = 0
        self.bytes = 0
        self.token = secrets.token_hex(6)

    def journal(self, *, kind: str, target: Path, layout: str = BESIDE, **details) -> Journal:
        """Start this restore's journal in the request's state folder (see journal)."""
        return Journal(
            self.request.state_dir,
            self.request.run_id or self.token,
            self.token,
            kind=kind,
            target=target,
            layout=layout,
            **details,
        )

    def recover(self, target: Path) -> None:
        """Undo an earlier restore into `target` that a crash interrupted, before this one."""
        recover_interrupted(self.request.state_dir, target=target, hooks=self.hooks)

    def publish(self, action: Callable[[], None]) -> None:
        """Run `action`, the step that changes the target, once the hooks allow it.

        `action` checks for a cancel only where stopping is safe (inside pg_restore's
        transaction, between tries of the copy into a live SQLite database, while streaming
        to a pod); a stop there is reported with what it left behind, `deadline.outcome`.
        """
        entered = False

        def step() -> None:
            nonlocal entered
            entered = True
            action()

        try:
            self.hooks.publish(step)
        except Cancelled as error:
            if not entered or self.deadline.expired:
                raise
            raise Cancelled(f"{error} It was stopped there: {self.deadline.outcome}") from None

    def tick(self) -> None:
        """Raise Cancelled when the restore timed out or was cancelled."""
        self.deadline.check()
        self.hooks.check()

    def warn(self, message: str) -> None:
        """Record a warning for the result, and report it now."""
        self.warnings.append(message)
        self.hooks.warn(message)

    def expected(self) -> str:
        """Return the archive's recorded sha256 once its presence and size check out."""
        size = self.archive.size()
        if size is None:
            raise ArchiveError(f"The archive {self.archive} is missing.")
        recorded = self.recorded_size()
        if size == 0:
            raise ArchiveError(f"The archive {self.archive} is empty (0 bytes).")
        if recorded is not None and recorded != size:
            raise ArchiveError(
                f"The archive {self.archive} is {size} bytes but its manifest says {recorded}: "
                f"it is {'truncated' if size < recorded else 'not the file that was written'}."
            )
        return expected_sha256(self.archive, self.manifest, self.request.catalog_sha256)

    def recorded_size(self) -> int | None:
        """Return the archive's size as its manifest records it, if it does."""
        recorded = self.manifest.header.get("archive", {}).get("size")
        return recorded if isinstance(recorded, int) else None

    def reading_keys(self) -> dict:
        """Return what an ArchiveReader of this archive needs to decrypt it, if encrypted."""
        return {
            "identities": self.request.identities,
            "recipients": self.recipients(),
            "stored_size": self.recorded_size(),
        }

    def recipients(self) -> list[str]:
        """Return the recipients recorded for the archive: the catalog's, else the manifest's."""
        if self.request.recipients:
            return list(self.request.recipients)
        return list((self.manifest.header.get("encryption") or {}).get("recipients", ()))

    def meter(self, current: str, selection: Selection | None = None) -> ProgressMeter:
        """Start reporting progress on `current`, over the files `selection` keeps."""
        files_total = self.manifest.total_files
        if selection is not None and not selection.everything:
            files_total = sum(
                1
                for entry in self.manifest.entries
                if entry.type == "file" and selection.includes(member_key(entry.path))
            )
        meter = ProgressMeter(
            self.hooks,
            bytes_total=self.manifest.total_bytes,
            files_total=files_total,
            current=current,
        )
        meter.update(force=True)
        return meter

    def member_filter(
        self, current: str, selection: Selection, helpers: frozenset[str] = frozenset()
    ) -> MemberFilter:
        """Return the filter for one reading of the archive, reporting progress as `current`."""
        return MemberFilter(
            archive_name=self.archive.name,
            manifest=self.manifest,
            selection=selection,
            helpers=helpers,
            meter=self.meter(current, selection),
        )

    def stream(
        self,
        filter_: MemberFilter,
        expected: str,
        *,
        sink: ProcessSink | None = None,
        staging: Path | None = None,
    ) -> None:
        """Read the whole archive through `filter_` into `sink`; kill `sink` on any failure."""
        try:
            stream_into(
                archive=self.archive,
                manifest=self.manifest,
                expected=expected,
                filter_=filter_,
                sink=sink,
                meter=filter_.meter,
                tick=self.tick,
                staging=staging,
                keep_owners=self.request.keeps_owners,
                **self.reading_keys(),
            )
        except BaseException:
            if sink is not None:
                sink.kill()
            raise
        if sink is not None:
            sink.close()

    def passed_checksum(self, digest: str) -> None:
        """Record that the archive's sha256 matched its manifest and checksum file."""
        self.checks.append(
            {
                "name": "checksum",
                "ok": True,
                "detail": f"sha256 {digest} matches the manifest and the checksum file",
            }
        )

    def passed_contents(self, filter_: MemberFilter) -> None:
        """Record what `filter_` let through: its warnings, the files written, the check."""
        for line in filter_.warnings():
            self.warn(line)
        self.files, self.bytes = filter_.files, filter_.bytes
        self.checks.append(
            {
                "name": "contents",
                "ok": True,
                "detail": f"{filter_.files} files ({format_bytes(filter_.bytes)}) match "
                "their sizes and sha256 in the manifest",
            }
        )

    def extract(
        self, staging: Path, selection: Selection, helpers: frozenset[str] = frozenset()
    ) -> MemberFilter:
        """Extract the archive into `staging` through the filter, verifying everything.

        The `helpers` (see hardlink_helpers) are extracted for the hardlinks that need
        them, then removed again unless selected.
        """
        expected = self.expected()
        filter_ = self.member_filter(f"restoring {self.archive.name}", selection, helpers)
        sink = ProcessSink(
            tar_extract_argv(staging, keep_owners=self.request.keeps_owners),
            what=f"tar extracting into {staging}",
            deadline=self.deadline,
            env=tar_env(),
        )
        self.stream(filter_, expected, sink=sink, staging=staging)
        self.passed_checksum(expected)
        self.passed_contents(filter_)
        drop_helpers(staging, selection, helpers)
        return filter_
