"""Big files written straight into staging, beside tar, with the owner, mode and mtime it sets."""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import stat
from collections.abc import Callable

from ..tarstream import Member
from .files import open_dir


@functools.lru_cache(maxsize=256)
def _owner_id(name: str, number: int, *, group: bool) -> int:
    """Map an owner the way tar does: by name when this system knows it, else by number."""
    if name:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(name).gr_gid if group else pwd.getpwnam(name).pw_uid
    return number


class DirectFile:
    """A big file written into staging by the writer thread, in stream order.

    Without `keep_owners` it belongs to this user and loses its set-id bits, as tar
    writes the others then (see Splitter).
    """

    def __init__(self, root_fd: int, path: str, member: Member, *, keep_owners: bool) -> None:
        self.root_fd = root_fd
        self.path = path
        self.member = member
        self.keep_owners = keep_owners
        self.fd: int | None = None

    def open(self) -> None:
        """Create the file (and parents tar has not made yet); it must not exist."""
        parent, name = os.path.split(self.path)
        # Parents tar has not made yet are made here; tar finds them and sets their modes
        # and times at its end, as for any folder.
        parent_fd = open_dir(self.root_fd, parent, create=_ignore)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self.fd = os.open(name, flags, 0o600, dir_fd=parent_fd)
        except OSError as error:
            error.filename = self.path
            raise
        finally:
            os.close(parent_fd)

    def write(self, data) -> Callable[[], None]:
        """Return the action that writes `data`, for the writer thread to run in order."""

        def action() -> None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as error:
                error.filename = self.path
                raise

        return action

    def close(self) -> None:
        """Set owner, mode and mtime as tar would, then close the file."""
        member, fd = self.member, self.fd
        self.fd = None
        try:
            mode = member.mode
            if not self.keep_owners:
                mode &= ~(stat.S_ISUID | stat.S_ISGID)
            elif os.geteuid() == 0:
                uid = _owner_id(member.uname, member.uid, group=False)
                os.fchown(fd, uid, _owner_id(member.gname, member.gid, group=True))
            os.fchmod(fd, mode)  # after chown, which clears set-id bits
            when = member.mtime
            ns = when * 1_000_000_000 if isinstance(when, int) else round(when * 1e9)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)

    def abandon(self) -> None:
        """Close the file after a failure; never raises."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _ignore(_relative: str) -> None:
    return None
