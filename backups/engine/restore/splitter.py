"""The second reading: check tar sees exactly the approved members; write big files directly."""

from __future__ import annotations

import collections
import os
import stat
from pathlib import Path

from ..errors import UnsafeArchiveError
from ..safety import shown
from ..tarstream import Member
from .children import ProcessSink
from .direct_files import DirectFile

_EXTENDED = frozenset(b"xgLK")
_ZERO_BLOCK = bytes(512)
_SET_ID = stat.S_ISUID | stat.S_ISGID


def _block_name(block) -> str:
    return bytes(block[:100]).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _size_field(block) -> int:
    """Read a header's size field as tar does; refuse what tars could read differently."""
    field = bytes(block[124:136])
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big") if field[0] == 0x80 else -1
    try:
        return int(field.rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        raise UnsafeArchiveError(
            f"The tar header of {shown(_block_name(block))} has a size field tar may read "
            "differently."
        ) from None


def without_set_id(block, mode: int) -> bytes:
    """Return a ustar header block with `mode` less its set-id bits, and its checksum."""
    header = bytearray(block)
    header[100:108] = b"%07o\0" % (mode & ~_SET_ID)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _pax_size(data: bytes) -> int | None:
    """Return the `size` record of a PAX extended header, if it has one."""
    if b" size=" not in data:
        return None
    size = None
    pos = 0
    while pos < len(data) and data[pos]:
        space = data.find(b" ", pos)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        if length <= 0:
            raise UnsafeArchiveError("A PAX header that tar may read differently was refused.")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"size":
            size = int(value) if value.isdigit() else -1
        pos += length
    return size


_HDR, _EXT, _PASS, _DIRECT, _END = range(5)


class Splitter:
    """Re-read the filtered stream the way tar will, and write big files directly.

    The scanner decided which members tar may see; this second reading checks that tar
    will see exactly those, with the data lengths the scanner assumed (a symlink or
    folder whose size field is not zero, which some tars read as data, is refused), so no
    header can hide in bytes the scanner took for data. Files of `direct_min` bytes or
    more are taken out of the stream and written here, by the sink's writer thread in
    stream order: one copy into the page cache instead of a pipe, a process hop and a
    write by tar. Everything else goes on to tar. Without `keep_owners` the set-id bits
    come off each header before tar reads it, so no setuid file exists even for a moment.
    """

    def __init__(
        self,
        out: ProcessSink,
        *,
        root: Path | None,
        direct_min: int | None,
        keep_owners: bool = True,
    ) -> None:
        self.out = out
        self.keep_owners = keep_owners
        self.direct_min = direct_min if root is not None else None
        self.approved: collections.deque = collections.deque()
        self._root_fd = (
            os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW) if root else None
        )
        self._state = _HDR
        self._seq = bytearray()  # the headers of the member being read, not yet sent
        self._left = 0
        self._pad = 0
        self._ext: bytearray | None = None
        self._ext_flag = b""
        self._ext_size = 0
        self._pax_size: int | None = None
        self._file: DirectFile | None = None
        self.direct_files: list[DirectFile] = []

    def approve(self, member: Member, path: str) -> None:
        """Record that `member` (at `path`) may be written; called in stream order."""
        self.approved.append((member, path))

    def __call__(self, data) -> None:
        view = memoryview(data)
        size = len(view)
        pos = start = 0
        out = self.out
        while pos < size:
            state = self._state
            if state == _PASS:
                take = min(size - pos, self._left)
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _HDR
            elif state == _HDR and not self._seq and size - pos >= 512:
                # The common case, a whole header in this piece: it stays in the run of bytes
                # passed on as they are, unless its file is written directly.
                block = view[pos : pos + 512]
                if block[156] in _EXTENDED or (block[0] == 0 and block == _ZERO_BLOCK):
                    self._sequence(view, pos, start)
                    pos += 512
                    start = pos
                    continue
                header = self._member(block)
                if header is not None:
                    if pos > start:
                        out(view[start:pos])
                    if header:
                        out(header)
                    start = pos + 512
                pos += 512
                if self._state == _PASS and self._left <= size - pos:
                    # The usual case, the member's data all in this piece: skip it here.
                    pos += self._left
                    self._left = 0
                    self._state = _HDR
            elif state == _DIRECT:
                if pos > start:
                    out(view[start:pos])
                take = min(size - pos, self._left)
                if take:
                    out.operation(self._file.write(view[pos : pos + take]))
                    self._left -= take
                    pos += take
                skip = min(size - pos, self._pad) if not self._left else 0
                pos += skip
                self._pad -= skip
                start = pos
                if not self._left and not self._pad:
                    out.operation(self._file.close)
                    self._file = None
                    self._state = _HDR
            elif state == _END:
                pos = size
            else:
                if pos > start:
                    out(view[start:pos])
                need = (512 - len(self._seq) % 512) if state == _HDR else self._left
                take = min(size - pos, need)
                piece = view[pos : pos + take]
                self._seq += piece
                if state == _EXT:
                    if self._ext is not None:
                        self._ext += piece
                    self._left -= take
                pos += take
                start = pos
                if state == _EXT and not self._left:
                    self._ext_done()
                elif state == _HDR and not len(self._seq) % 512:
                    self._header(bytes(self._seq[-512:]))
        # Whatever is left since `start` is data tar gets as it is.
        if pos > start:
            out(view[start:pos])

    def _sequence(self, view: memoryview, pos: int, start: int) -> None:
        """Start holding headers back (at an extended or end-of-archive header)."""
        if pos > start:
            self.out(view[start:pos])
        self._seq += view[pos : pos + 512]
        self._header(bytes(self._seq[-512:]))

    def _header(self, block: bytes) -> None:
        """Handle a header block that ends the held sequence `_seq`."""
        out = self.out
        if block == _ZERO_BLOCK:
            out(bytes(self._seq))
            self._seq = bytearray()
            self._state = _END
            return
        if block[156] in _EXTENDED:
            size = _size_field(block)
            if size < 0 or size > (16 << 20):
                raise UnsafeArchiveError(f"An extended tar header of {size} bytes was refused.")
            self._ext_flag = block[156:157]
            self._ext = bytearray() if block[156] in b"xg" else None
            self._left = size + (-size % 512)
            self._ext_size = size
            self._state = _EXT if self._left else _HDR
            return
        seq, self._seq = self._seq, bytearray()
        header = self._member(block)
        if header is None:
            out(bytes(seq))
        elif header:
            out(bytes(seq[:-512]) + header)

    def _member(self, block) -> bytes | None:
        """Match a member header with the next approved member.

        Return None to pass the header on as it is, the header to send instead, or b""
        when the member is written directly (tar sees neither it nor its headers).
        """
        try:
            member, path = self.approved.popleft()
        except IndexError:
            raise UnsafeArchiveError(
                f"The archive holds a member ({shown(_block_name(block))}) that tar would read "
                "but its checks did not see; the restore was stopped."
            ) from None
        if self._pax_size is not None:
            size = self._pax_size
            self._pax_size = None
        else:
            size = _size_field(block)
        expected = member.size if member.type == "file" else 0
        if size != expected:
            raise UnsafeArchiveError(
                f"The archive member {shown(member.raw_name)} has a size field ({size}) that "
                f"tar would read differently from the checks ({expected}); the restore was "
                "stopped."
            )
        if self.direct_min is not None and member.type == "file" and size >= self.direct_min:
            direct = DirectFile(self._root_fd, path, member, keep_owners=self.keep_owners)
            self.direct_files.append(direct)
            self.out.operation(direct.open)
            self._file = direct
            self._left, self._pad = size, -size % 512
            self._state = _DIRECT
            return b""
        self._left = size + (-size % 512)
        self._state = _PASS if self._left else _HDR
        if not self.keep_owners and member.mode & _SET_ID:
            return without_set_id(block, member.mode)
        return None

    def _ext_done(self) -> None:
        self._state = _HDR
        if self._ext is None:
            return
        data = bytes(self._ext[: self._ext_size])
        self._ext = None
        size = _pax_size(data)
        if size is None:
            return
        if self._ext_flag == b"g" or size < 0:
            raise UnsafeArchiveError("A PAX header that sets sizes for tar was refused.")
        self._pax_size = size

    def finish(self) -> None:
        """Check the stream ended where the scanner said it did."""
        if self._state != _END or self.approved:
            raise UnsafeArchiveError(
                "The archive ends differently for tar than for its checks; the restore was stopped."
            )

    def close(self) -> None:
        """Release the staging folder and any file left open by a failure."""
        for direct in self.direct_files:
            direct.abandon()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
