"""What the manifest says an archive holds, and how members are matched with it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..manifest import Manifest
from ..safety import ROOT, clean_path, shown
from ..tarstream import Member, normalise


def member_key(name: str) -> str:
    """Return the path a member or manifest entry is matched by ("" for the root)."""
    path = clean_path(name)
    return normalise(name) if path is None else path


class ContentCheck:
    """Compare archive members with the manifest: presence, type, size, link, sha256."""

    def __init__(self, manifest: Manifest, wanted: Callable[[str], bool] | None = None) -> None:
        self.entries = {}
        for entry in manifest.entries:
            self.entries.setdefault(member_key(entry.path), entry)
        self.wanted = wanted
        self.seen: set[str] = set()

    def header(self, key: str, member: Member) -> str | None:
        """Check a member's headers; return a problem, or None."""
        self.seen.add(key)
        entry = self.entries.get(key)
        if entry is None:
            if key == ROOT and member.type == "dir":
                return None
            return f"{shown(member.raw_name)} is in the archive but not in the manifest"
        if entry.type != member.type:
            return (
                f"{shown(key)} is a {member.type} in the archive but a {entry.type} in the manifest"
            )
        if member.type == "file" and entry.size != member.size:
            return (
                f"{shown(key)} holds {member.size} bytes in the archive but {entry.size} in "
                "the manifest"
            )
        if member.type == "symlink" and (entry.target or "") != (member.target or ""):
            return (
                f"the symlink {shown(key)} points to {shown(member.target or '')} in the "
                f"archive but to {shown(entry.target or '')} in the manifest"
            )
        if member.type == "hardlink" and member_key(entry.target or "") != member_key(
            member.target or ""
        ):
            return (
                f"the hardlink {shown(key)} has another target in the archive than in the manifest"
            )
        return None

    def data(self, key: str, member: Member) -> str | None:
        """Check a file's sha256 once its data has passed; return a problem, or None."""
        entry = self.entries.get(key)
        if member.type != "file" or entry is None or not entry.sha256:
            return None
        if entry.sha256.lower() != member.sha256:
            return f"{shown(key)} does not match its sha256 in the manifest"
        return None

    def missing(self, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Return the manifest paths (wanted, not skipped) that no member matched."""
        return [
            key
            for key in self.entries
            if key not in self.seen
            and key != ROOT
            and key not in skip
            and (self.wanted is None or self.wanted(key))
        ]


def listed(items: Sequence[str], limit: int = 5) -> str:
    """Name the first few items of a list and count the rest."""
    names = ", ".join(shown(item) for item in items[:limit])
    if len(items) > limit:
        names += f" and {len(items) - limit} more"
    return names
