"""What the manifest says an archive holds, and how members are matched with it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..manifest import Entry, Manifest
from ..safety import ROOT, clean_path, shown
from ..tarstream import Member, normalise


def member_key(name: str) -> str:
    """Return the path a member or manifest entry is matched by ("" for the root)."""
    path = clean_path(name)
    return normalise(name) if path is None else path


class ContentCheck:
    """Compare archive members with the manifest: presence, type, size, link, sha256.

    Members usually come in the manifest's own order (the manifest is written as the
    archive is), so each is first matched with the next manifest entry; only the first
    member out of that order builds the index by path, and matching goes on through it.
    """

    def __init__(self, manifest: Manifest, wanted: Callable[[str], bool] | None = None) -> None:
        self._order = manifest.entries
        self._next = 0  # entries matched in order so far
        self._in_order = True
        self._by_key: dict[str, Entry] | None = None
        self.wanted = wanted
        self.seen: set[str] = set()  # keys matched once out of order
        # The entry the last `header` call matched, for the `data` check that follows it.
        self.last: Entry | None = None

    @property
    def entries_indexed(self) -> bool:
        """Return whether matching has had to index the manifest by path."""
        return self._by_key is not None

    @property
    def entries(self) -> dict[str, Entry]:
        """Return the manifest entries by key, the first one of a repeated path."""
        if self._by_key is None:
            entries: dict[str, Entry] = {}
            for entry in self._order:
                key = member_key(entry.path)
                if key not in entries:
                    entries[key] = entry
            self._by_key = entries
        return self._by_key

    def _match(self, key: str) -> Entry | None:
        if self._in_order:
            order, index = self._order, self._next
            if index < len(order) and order[index].path == key:
                self._next = index + 1
                return order[index]
            if key == ROOT:
                return self._root_entry()  # the root folder may or may not be listed
            self._in_order = False
            self.seen.update(member_key(entry.path) for entry in order[:index])
        self.seen.add(key)
        return self.entries.get(key)

    def _root_entry(self) -> Entry | None:
        """Return the manifest's entry for the root folder, without indexing every path.

        A pod's archive starts with "./"; building the index for it would undo the
        in-order matching for the whole archive.
        """
        if self._by_key is not None:
            return self._by_key.get(ROOT)
        roots = (e for e in self._order if not e.path.strip("./") and member_key(e.path) == ROOT)
        return next(roots, None)

    def header(self, key: str, member: Member) -> str | None:
        """Check a member's headers; return a problem, or None."""
        self.last = entry = self._match(key)
        if entry is None:
            if key == ROOT and member.type == "dir":
                return None
            return f"{shown(member.raw_name)} is in the archive but not in the manifest"
        kind = member.type
        if entry.type != kind:
            return f"{shown(key)} is a {kind} in the archive but a {entry.type} in the manifest"
        if kind == "file":
            if entry.size != member.size:
                return (
                    f"{shown(key)} holds {member.size} bytes in the archive but {entry.size} "
                    "in the manifest"
                )
            return None
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

    def data(self, key: str, member: Member, entry: Entry | None = None) -> str | None:
        """Check a file's sha256 once its data has passed; return a problem, or None.

        `entry` saves the lookup when the caller has it (see `last`).
        """
        if entry is None:
            entry = self.entries.get(key)
        if member.type != "file" or entry is None or not entry.sha256:
            return None
        expected = entry.sha256
        if expected != member.sha256 and expected.lower() != member.sha256:
            return f"{shown(key)} does not match its sha256 in the manifest"
        return None

    def missing(self, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Return the manifest paths (wanted, not skipped) that no member matched."""
        if self._in_order:
            if self._next == len(self._order):
                return []
            matched = {entry.path for entry in self._order[: self._next]}
            keys = dict.fromkeys(member_key(entry.path) for entry in self._order[self._next :])
            seen = matched.__contains__
        else:
            keys, seen = self.entries, self.seen.__contains__
        return [
            key
            for key in keys
            if not seen(key)
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
