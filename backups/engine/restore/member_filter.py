"""The filter between the archive and the writer: which members pass, and are they right."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ArchiveError
from ..manifest import Manifest
from ..safety import MemberPolicy, Selection
from ..tarstream import Member
from .contents import ContentCheck, listed, member_key
from .progress import ProgressMeter


class MemberFilter:
    """Decide each member (safety, selection, manifest) and check each file's sha256."""

    def __init__(
        self,
        *,
        archive_name: str,
        manifest: Manifest,
        selection: Selection,
        helpers: frozenset[str] = frozenset(),
        meter: ProgressMeter | None = None,
    ) -> None:
        self.archive_name = archive_name
        self.approve: Callable[[Member, str], None] | None = None
        self.policy = MemberPolicy()
        self.selection = selection
        self.helpers = helpers
        self.check = ContentCheck(
            manifest,
            wanted=None if selection.everything else selection.includes,
        )
        self.meter = meter
        self.skipped: set[str] = set()
        self.files = 0
        self.bytes = 0
        self._path = ""  # where the member `decide` last let through is written

    def decide(self, member: Member) -> bool:
        """Return whether `member` is written; raise when its headers contradict the manifest."""
        path = self.policy.review(member)
        if path is None:
            self.skipped.add(member_key(member.raw_name))
            return False
        selection = self.selection
        if not selection.everything and not (
            selection.includes(path)
            or path in self.helpers
            or (member.type == "dir" and selection.is_ancestor(path))
        ):
            return False
        problem = self.check.header(path, member)
        if problem:
            raise self._mismatch(problem)
        if self.approve is not None:
            self.approve(member, path)
        self._path = path
        return True

    def on_member(self, member: Member) -> None:
        """Check a file once its data has been read, and count it."""
        if member.type != "file":
            return
        # The scanner calls this for a member right after `decide` let it through, so the
        # path and the manifest entry are the ones `decide` found.
        path = self._path
        problem = self.check.data(path, member, self.check.last)
        if problem:
            raise self._mismatch(problem)
        if not self.helpers or path not in self.helpers or self.selection.includes(path):
            self.files += 1
            self.bytes += member.size
            if self.meter is not None:
                self.meter.progress.files_done = self.files

    def finish(self) -> None:
        """Fail when members the manifest lists never came."""
        missing = self.check.missing(self.skipped)
        if missing:
            raise ArchiveError(
                f"The archive {self.archive_name} lacks {len(missing)} of the entries its "
                f"manifest lists: {listed(missing)}."
            )

    def _mismatch(self, problem: str) -> ArchiveError:
        return ArchiveError(
            f"The archive {self.archive_name} does not match its manifest: {problem}."
        )

    def warnings(self) -> list[str]:
        """Return what the safety policy skipped or changed, for the user."""
        return self.policy.warnings()
