"""Which archive members a restore may write, and why the others are refused.

An archive is not trusted: a pod's tar is produced by whatever runs in the pod, and a file
on disk can be swapped. A member could name an absolute path, climb out with "..", plant a
symlink and then write through it, hardlink to a file outside the target, or be a device
node. `MemberPolicy` sees every member's headers before any of its bytes reach a writer and
keeps only what lands inside the target as a folder, a file, a symlink (whatever it points
to: it is stored, never followed) or a hardlink to a file kept earlier.

`Selection` is the `--path` filter of a partial restore.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

ROOT = ""

# Member types that are never written, with the words used in warnings.
_REFUSED_TYPES = {
    "fifo": "is a FIFO",
    "char": "is a character device",
    "block": "is a block device",
    "other": "has a member type this restore does not write",
}
_DIR, _IMPLICIT = "dir", "implicit"
_FOLDERS = (_DIR, _IMPLICIT)
_FILE_LIKE = ("file", "hardlink")
# Enough names to act on without flooding a run's record on a hostile archive.
MAX_NAMED = 50


def plain_path(name: str) -> str | None:
    """Return `name` without "./" and a trailing "/" when it is plainly a safe relative path.

    None means "look closer" (absolute, ".", "..", hidden names, "//"), not "unsafe":
    this is the cheap test that almost every member of a real archive passes.
    """
    body = name[2:] if name[:2] == "./" else name
    if body[:1] in ("/", ".") or "//" in body or "/." in body:
        return None
    return body[:-1] if body[-1:] == "/" else body


def split_name(name: str) -> tuple[list[str] | None, str | None]:
    """Return a stored member name's path components, or None and why it is unsafe.

    "." and empty components are dropped, as tar drops them when it extracts.
    """
    if name.startswith("/"):
        return None, "has an absolute path"
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None, "climbs out of the target with '..'"
    return parts, None


def clean_path(name: str) -> str | None:
    """Return a member name as a relative path ("" for the root), or None when unsafe."""
    path = plain_path(name)
    if path is not None:
        return path
    parts, _ = split_name(name)
    return None if parts is None else "/".join(parts)


_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]}
_CONTROL.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})


def shown(name: str) -> str:
    """Render a member name for a message: quoted, control and undecodable bytes escaped."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return f"'{text.translate(_CONTROL)}'"


@dataclass
class Rejection:
    """A member the policy refused, and why."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"Skipped the archive member {shown(self.name)}: it {self.reason}."


@dataclass
class MemberPolicy:
    """Decide, member by member, whether writing it under the target is safe.

    The policy keeps the tree that a full restore would create (folders, including the
    ones tar creates implicitly for a member's parents, files, symlinks, hardlinks), so a
    later member is judged against what is already there: nothing is written below a
    symlink or a file, a path is written once, and a hardlink points at an earlier file.
    """

    rejected: list[Rejection] = field(default_factory=list)
    _kinds: dict[str, str] = field(default_factory=lambda: {ROOT: _IMPLICIT})

    def review(self, member) -> str | None:
        """Return the path `member` would be written at, or None after recording why not."""
        kind = member.type
        reason = _REFUSED_TYPES.get(kind)
        if reason is not None:
            return self._refuse(member, reason)
        path = plain_path(member.raw_name)
        if path is None:
            parts, reason = split_name(member.raw_name)
            if parts is None:
                return self._refuse(member, reason)
            path = "/".join(parts)
        kinds = self._kinds
        if not path and kind != _DIR:
            return self._refuse(member, "names the target folder itself but is not a folder")
        # A known folder parent vouches for all its ancestors: they were checked when it was
        # recorded, and a recorded path never becomes a symlink or a file.
        known_parent = kinds.get(path.rpartition("/")[0]) in _FOLDERS
        if not known_parent:
            parts = path.split("/")
            prefix = ""
            for part in parts[:-1]:
                prefix = f"{prefix}/{part}" if prefix else part
                above = kinds.get(prefix)
                if above == "symlink":
                    return self._refuse(
                        member, f"would be written through the symlink {shown(prefix)}"
                    )
                if above in _FILE_LIKE:
                    return self._refuse(member, f"is below {shown(prefix)}, which is not a folder")
        existing = kinds.get(path)
        if existing is not None:
            if existing != _IMPLICIT:
                return self._refuse(member, "appears more than once (the first copy was kept)")
            if kind != _DIR:
                return self._refuse(member, "would replace a folder that earlier members are in")
        if kind == "hardlink":
            reason = self._hardlink_problem(member.target or "")
            if reason is not None:
                return self._refuse(member, reason)
        if not known_parent:
            prefix = ""
            for part in parts[:-1]:
                prefix = f"{prefix}/{part}" if prefix else part
                kinds.setdefault(prefix, _IMPLICIT)
        kinds[path] = kind
        return path

    def _hardlink_problem(self, target: str) -> str | None:
        parts, reason = split_name(target)
        if parts is None:
            return f"is a hardlink to {shown(target)}, which {reason}"
        if not parts:
            return "is a hardlink without a target"
        if self._kinds.get("/".join(parts)) not in _FILE_LIKE:
            return f"is a hardlink to {shown(target)}, which is not an earlier file in the archive"
        return None

    def _refuse(self, member, reason: str) -> None:
        self.rejected.append(Rejection(member.raw_name, reason))
        return None

    def warnings(self) -> list[str]:
        """Return one warning per refused member, the first MAX_NAMED named, then a count."""
        lines = [str(rejection) for rejection in self.rejected[:MAX_NAMED]]
        if len(self.rejected) > MAX_NAMED:
            lines.append(
                f"Skipped {len(self.rejected) - MAX_NAMED} more unsafe archive members "
                f"(only the first {MAX_NAMED} are named)."
            )
        return lines


def normalise_request_path(path: str, root: str | None = None) -> str:
    """Return a `--path` argument as a path relative to the source root.

    An absolute path under the source's own location `root` is accepted too.
    """
    text = path.strip()
    if root and text.startswith("/"):
        base = root.rstrip("/")
        if text == base:
            return ROOT
        if text.startswith(base + "/"):
            text = text[len(base) + 1 :]
    parts, reason = split_name(text)
    if parts is None:
        raise ValueError(f"The path {text!r} {reason}; give a path relative to the source root.")
    return "/".join(parts)


class Selection:
    """The paths of a partial restore: each one, what is below it, and its parent folders."""

    def __init__(self, paths: Iterable[str]) -> None:
        cleaned = sorted(set(paths))
        # A path below another selected path adds nothing.
        kept: list[str] = []
        for path in cleaned:
            if not any(_is_within(path, other) for other in kept):
                kept.append(path)
        self.paths: tuple[str, ...] = tuple(kept)
        self.everything = ROOT in self.paths or not self.paths
        self._exact = set(self.paths)
        self._ancestors = {ROOT}
        for path in self.paths:
            parts = path.split("/")
            for end in range(1, len(parts)):
                self._ancestors.add("/".join(parts[:end]))

    def includes(self, path: str) -> bool:
        """Return True when `path` is a selected path or below one."""
        if self.everything or path in self._exact:
            return True
        parts = path.split("/")
        return any("/".join(parts[:end]) in self._exact for end in range(1, len(parts)))

    def is_ancestor(self, path: str) -> bool:
        """Return True when `path` is a folder above a selected path."""
        return path in self._ancestors

    def unmatched(self, known: Sequence[str]) -> list[str]:
        """Return the selected paths that match nothing in `known`."""
        if self.everything:
            return []
        found = set()
        for path in known:
            for selected in self.paths:
                if _is_within(path, selected):
                    found.add(selected)
        return [path for path in self.paths if path not in found]


def _is_within(path: str, parent: str) -> bool:
    return parent == ROOT or path == parent or path.startswith(parent + "/")
