"""A streaming tar parser and filter: bytes go in, members come out.

The scanner never holds a member's data: file bytes are hashed as they pass (sha256 per
file) and, when a sink is given, forwarded in as few calls as possible, with the members
that `decide` rejects left out. It reads ustar, GNU (long names and links) and PAX
(local and global headers, binary names, base-256 numbers), and verifies every header's
checksum, so a damaged archive fails at the byte where it is damaged.

Work is done on memoryviews of the fed chunks; a header is copied (512 bytes), file data
never is.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ArchiveError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
# An extended header bigger than this is damage, not a name; refusing it keeps memory flat.
MAX_EXTENDED = 16 << 20

FILE, DIR, SYMLINK, HARDLINK = "file", "dir", "symlink", "hardlink"
FIFO, CHAR, BLOCKDEV, OTHER = "fifo", "char", "block", "other"

_TYPES = {
    b"0": FILE,
    b"\0": FILE,
    b"7": FILE,
    b"1": HARDLINK,
    b"2": SYMLINK,
    b"3": CHAR,
    b"4": BLOCKDEV,
    b"5": DIR,
    b"6": FIFO,
}
# These carry no data in the archive whatever their size field says (as tarfile reads them).
_NO_DATA = frozenset((DIR, SYMLINK, HARDLINK, CHAR, BLOCKDEV, FIFO))
_LINKS = frozenset((SYMLINK, HARDLINK))

# name mode uid gid size mtime chksum type linkname magic+version uname gname major minor prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s")
_POSIX_MAGIC = b"ustar\x0000"

_HDR, _DATA, _ZERO, _END = range(4)
_OWNERS_KEPT = 1024
_adler32 = zlib.adler32
_sha256 = hashlib.sha256


@dataclass(slots=True)
class Member:
    """One archive member as its headers describe it; `sha256` is set once a file has passed."""

    path: str
    type: str
    size: int
    mode: int
    mtime: int | float
    target: str | None
    uid: int
    gid: int
    uname: str
    gname: str
    raw_name: str
    sha256: str | None = None


def _text(raw: bytes) -> str:
    """Decode a stored name; bytes that are not UTF-8 survive as surrogate escapes."""
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _number(field: bytes, what: str, offset: int) -> int:
    """Read a numeric header field: octal text, or base-256 when the top bit is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            value -= 1 << (8 * (len(field) - 1))
        return value
    try:
        return int(field.rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        pass
    try:
        return int(_cstr(field).strip() or b"0", 8)
    except ValueError:
        raise ArchiveError(
            f"The tar header at byte offset {offset} has an invalid {what} field {field!r}."
        ) from None


def normalise(name: str) -> str:
    """Return a member's path without a leading "./" or a trailing "/" ("." for the root)."""
    while name.startswith("./"):
        name = name[2:]
    stripped = name.rstrip("/")
    if stripped:
        return stripped
    return name[:1] or "."


def _parse_pax(data: bytes, offset: int) -> dict[str, bytes]:
    """Parse PAX records ("<len> <key>=<value>\\n"); values stay bytes until used."""
    records: dict[str, bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            length = 0
        if space < 0 or length <= 0 or pos + length > end or data[pos + length - 1] != 0x0A:
            raise ArchiveError(f"The PAX extended header at byte offset {offset} is malformed.")
        record = data[space + 1 : pos + length - 1]
        key, sep, value = record.partition(b"=")
        if not sep:
            raise ArchiveError(f"The PAX extended header at byte offset {offset} is malformed.")
        records[key.decode("utf-8", "replace")] = value
        pos += length
    return records


class TarScanner:
    """Parse a tar stream fed in chunks, hash each file, optionally forward a filtered copy.

    `decide(member)` runs once a member's headers are parsed; False leaves the member (its
    headers and data) out of what goes to `sink`, and it is not hashed. `on_member(member)`
    runs after a kept member's data has passed, with `sha256` filled for files. The
    end-of-archive blocks and whatever follows them are forwarded as they are, so with
    everything kept the sink receives exactly the input.

    The sink receives memoryviews into the chunks given to `feed` (no copy), and bytes for
    headers held across chunks: it must use or copy them before the fed buffer is reused.
    """

    def __init__(
        self,
        *,
        decide: Callable[[Member], bool] | None = None,
        on_member: Callable[[Member], None] | None = None,
        sink: Callable[[bytes], None] | None = None,
    ) -> None:
        self.decide = decide
        self.on_member = on_member
        self.sink = sink
        self.members_seen = 0
        self.bytes_in = 0
        self.payload_bytes = 0
        self._state = _HDR
        self._partial = bytearray()
        # Data state: bytes of data left, then padding; hashed into _hash, or collected.
        self._remaining = 0
        self._pad = 0
        self._hash = None
        self._collect: bytearray | None = None
        self._ext_type = b""
        self._ext_offset = 0
        self._member: Member | None = None
        self._counts_payload = False
        # Extended headers seen for the member being parsed.
        self._pax: dict[str, bytes] = {}
        self._pax_global: dict[str, bytes] = {}
        self._long_name: bytes | None = None
        self._long_link: bytes | None = None
        self._owners: dict[tuple, tuple] = {}
        # Forwarding: stream offset up to which bytes were sent (or dropped); headers of an
        # undecided member spanning chunks are held as copies until `decide` answers.
        self._seq_start: int | None = None
        self._fwd_done = 0
        self._held: list[bytes] = []
        self._dropping = False
        self._chunk: memoryview | None = None
        self._chunk_base = 0

    # -- feeding ----------------------------------------------------------------------

    def feed(self, data: bytes | memoryview) -> None:
        """Parse the next chunk of the stream."""
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        size = len(view)
        if not size:
            return
        base = self.bytes_in
        self.bytes_in = base + size
        self._chunk = view
        self._chunk_base = base
        pos = 0
        while pos < size:
            state = self._state
            if state == _DATA:
                remaining = self._remaining
                if remaining:
                    take = size - pos if size - pos < remaining else remaining
                    end = pos + take
                    digest = self._hash
                    if digest is not None:
                        digest.update(view[pos:end])
                    elif self._collect is not None:
                        self._collect += view[pos:end]
                    if self._counts_payload:
                        self.payload_bytes += take
                    remaining -= take
                    self._remaining = remaining
                    pos = end
                    if remaining:
                        break
                pad = self._pad
                if pad:
                    if size - pos < pad:
                        self._pad = pad - (size - pos)
                        break
                    pos += pad
                    self._pad = 0
                self._data_done(base + pos)
                continue
            if state == _END:
                break
            # A header block: from the chunk directly when whole, else reassembled.
            if self._partial or size - pos < BLOCK:
                need = BLOCK - len(self._partial)
                piece = view[pos : pos + need]
                self._partial += piece
                pos += len(piece)
                if len(self._partial) < BLOCK:
                    # Hold the partial block: it may start a member that gets dropped.
                    if self._seq_start is None:
                        self._seq_start = base + pos - len(self._partial)
                    break
                block = bytes(self._partial)
                self._partial.clear()
            else:
                block = view[pos : pos + BLOCK].tobytes()
                pos += BLOCK
            self._block(block, base + pos - BLOCK)
            if self._state == _DATA and self._collect is None:
                # The usual case, a file whose data is all in this chunk: finish it here
                # rather than going round the loop.
                remaining = self._remaining
                end = pos + remaining + self._pad
                if end <= size:
                    digest = self._hash
                    if digest is not None:
                        digest.update(view[pos : pos + remaining])
                    if self._counts_payload:
                        self.payload_bytes += remaining
                    self._remaining = self._pad = 0
                    pos = end
                    self._data_done(base + pos)
        self._flush_chunk(base + size)
        self._chunk = None

    def close(self) -> None:
        """Check that the stream ended cleanly, after the end-of-archive blocks."""
        if self._state == _END:
            return
        offset = self.bytes_in
        if self._state == _DATA and not self._ext_type:
            name = repr(self._member.raw_name) if self._member is not None else "a member"
            raise ArchiveError(
                f"The archive is truncated: it ends at byte {offset} inside the data of {name}."
            )
        if self._state == _DATA or self._partial or self._seq_start is not None:
            raise ArchiveError(
                f"The archive is truncated: it ends at byte {offset} inside a member's headers."
            )
        raise ArchiveError(
            f"The archive is truncated: it ends at byte {offset} before the end-of-archive marker."
        )

    # -- headers ----------------------------------------------------------------------

    def _block(self, block: bytes, offset: int) -> None:
        state = self._state
        if block[0] == 0 and block == ZERO_BLOCK:
            if self._seq_start is not None and self._seq_start < offset:
                raise ArchiveError(
                    f"The archive is damaged: an end-of-archive block at byte offset {offset} "
                    "follows a member's extended headers."
                )
            self._seq_start = None
            self._state = _END if state == _ZERO else _ZERO
            return
        if state == _ZERO:
            raise ArchiveError(
                f"The archive is damaged: a lone zero block at byte offset {offset - BLOCK}."
            )
        fields = _HEADER.unpack_from(block)
        chk = fields[6]
        # Adler-32's low half is 1 + the byte sum, exact while the sum stays below 65521:
        # two 256-byte halves (at most 65280 each) give the header's byte sum in C.
        total = (_adler32(block[:256]) & 0xFFFF) + (_adler32(block[256:]) & 0xFFFF) - 2
        total += 256 - sum(chk)  # the checksum field counts as eight spaces
        try:
            stored = int(chk.rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            try:
                stored = int(_cstr(chk).strip() or b"0", 8)
            except ValueError:
                stored = -1  # not even a number: damage, reported as a bad checksum
        if total != stored and _signed_sum(block) != stored:
            raise ArchiveError(
                f"The archive is damaged: bad tar header checksum at byte offset {offset}."
            )
        if self._seq_start is None:
            self._seq_start = offset
        kind = fields[7]
        if kind in b"xgLK":
            size = _number(fields[4], "size", offset)
            if size > MAX_EXTENDED:
                raise ArchiveError(
                    f"The archive is damaged: an extended header of {size} bytes at byte "
                    f"offset {offset}."
                )
            if kind == b"g" and self._seq_start == offset:
                # A global header belongs to no member: it is always forwarded.
                self._seq_start = None
            self._ext_type = kind
            self._ext_offset = offset
            self._collect = bytearray()
            self._hash = None
            self._member = None
            self._counts_payload = False
            self._remaining = size
            self._pad = -size % BLOCK
            self._state = _DATA
            if not size:
                self._data_done(offset + BLOCK)
            return
        self._member_header(fields, offset)

    def _member_header(self, fields: tuple, offset: int) -> None:
        name, _, _, _, size, mtime, _, kind, link, magic = fields[:10]
        # Mode, owner and group repeat from member to member: parsed once per distinct set.
        owner_key = fields[1:4] + fields[10:12]
        owner = self._owners.get(owner_key)
        if owner is None:
            if len(self._owners) >= _OWNERS_KEPT:
                self._owners.clear()  # a hostile archive must not grow it without end
            owner = self._owners[owner_key] = (
                _number(fields[1], "mode", offset),
                _number(fields[2], "uid", offset),
                _number(fields[3], "gid", offset),
                _text(_cstr(fields[10])),
                _text(_cstr(fields[11])),
            )
        mode, uid, gid, uname_text, gname_text = owner
        try:
            size = int(size.rstrip(b"\0 ") or b"0", 8)
            mtime = int(mtime.rstrip(b"\0 ") or b"0", 8)
        except ValueError:  # base-256 numbers, or odd padding
            size = _number(fields[4], "size", offset)
            mtime = _number(fields[5], "mtime", offset)
        mtype = _TYPES.get(kind, OTHER)
        target = None
        pax = self._pax
        if self._pax_global:
            # An empty local value cancels a global one.
            pax = {key: value for key, value in {**self._pax_global, **pax}.items() if value}
        if pax or self._long_name is not None or self._long_link is not None:
            raw, size, mtime, uid, gid, target = self._extended(
                pax, fields, mtype, size, mtime, uid, gid, offset
            )
            if "uname" in pax:
                uname_text = _text(pax["uname"])
            if "gname" in pax:
                gname_text = _text(pax["gname"])
            self._pax = {}
            self._long_name = self._long_link = None
        else:
            end = name.find(b"\0")
            raw = name if end < 0 else name[:end]
            if magic == _POSIX_MAGIC and fields[14][0]:
                raw = _cstr(fields[14]) + b"/" + raw
            if mtype in _LINKS:
                target = _text(_cstr(link))
        raw_name = raw.decode("utf-8", "surrogateescape")
        if mtype == FILE and raw_name[-1:] == "/" and kind != b"7" and magic != _POSIX_MAGIC:
            mtype = DIR  # the old V7 way to store a directory
        if size < 0:
            raise ArchiveError(f"The tar header at byte offset {offset} has a negative size.")
        if size and mtype in _NO_DATA:
            # tar implementations disagree on whether data follows such a header (GNU tar
            # skips it, tarfile and busybox read it), so a reader and an extractor could see
            # different members: refuse rather than guess.
            raise ArchiveError(
                f"The archive is damaged: the {mtype} member {raw_name!r} at byte offset "
                f"{offset} claims {size} bytes of data, which no tar writer should store."
            )
        path = raw_name
        if path[:2] == "./" or path[-1:] == "/" or not path:
            path = normalise(path)
        is_file = mtype == FILE
        member = Member(
            path,
            mtype,
            size if is_file else 0,
            mode & 0o7777,
            mtime,
            target,
            uid,
            gid,
            uname_text,
            gname_text,
            raw_name,
        )
        self.members_seen += 1
        decide = self.decide
        keep = True if decide is None else decide(member)
        if not keep and self.sink is not None:
            self._emit_until(self._seq_start)
            self._dropping = True
        self._seq_start = None
        if mtype in _NO_DATA:
            size = 0
        self._member = member if keep else None
        self._hash = _sha256() if keep and is_file else None
        self._collect = None
        self._counts_payload = is_file
        self._remaining = size
        self._pad = -size % BLOCK
        self._state = _DATA
        if not size:
            self._data_done(offset + BLOCK)

    def _extended(self, pax, fields, mtype, size, mtime, uid, gid, offset):
        """Apply PAX records and GNU long names over the ustar fields of a header."""
        if "path" in pax:
            raw = pax["path"]
        elif self._long_name is not None:
            raw = _cstr(self._long_name)
        else:
            raw = _cstr(fields[0])
            if fields[9] == _POSIX_MAGIC and fields[14][0]:
                raw = _cstr(fields[14]) + b"/" + raw
        if any(key.startswith("GNU.sparse") for key in pax):
            # GNU tar reads the real name and layout from these keys; this reader does not,
            # so it would hash and check a different file than tar extracts.
            raise ArchiveError(
                f"The archive holds a GNU sparse file at byte offset {offset}, which this "
                "version cannot verify; create archives without --sparse."
            )
        if "size" in pax:
            size = _pax_int(pax["size"], "size", offset)
        if "mtime" in pax:
            mtime = _pax_time(pax["mtime"], offset)
        if "uid" in pax:
            uid = _pax_int(pax["uid"], "uid", offset)
        if "gid" in pax:
            gid = _pax_int(pax["gid"], "gid", offset)
        target = None
        if mtype in _LINKS:
            if "linkpath" in pax:
                target = _text(pax["linkpath"])
            elif self._long_link is not None:
                target = _text(_cstr(self._long_link))
            else:
                target = _text(_cstr(fields[8]))
        return raw, size, mtime, uid, gid, target

    def _data_done(self, end: int) -> None:
        """Finish the member (or extended header) whose data ended at stream offset `end`."""
        self._state = _HDR
        if self._ext_type:
            data = bytes(self._collect)
            kind = self._ext_type
            self._collect = None
            self._ext_type = b""
            if kind == b"x":
                self._pax.update(_parse_pax(data, self._ext_offset))
            elif kind == b"g":
                self._pax_global.update(_parse_pax(data, self._ext_offset))
            elif kind == b"L":
                self._long_name = data
            else:
                self._long_link = data
            return
        member = self._member
        if member is not None:
            if self._hash is not None:
                member.sha256 = self._hash.hexdigest()
                self._hash = None
            self._member = None
            if self.on_member is not None:
                self.on_member(member)
        if self._dropping:
            self._held.clear()
            self._fwd_done = end
            self._dropping = False

    # -- forwarding -------------------------------------------------------------------

    def _emit_until(self, end: int) -> None:
        """Send the kept bytes from where forwarding stopped up to stream offset `end`."""
        if end <= self._fwd_done:
            return
        sink = self.sink
        for piece in self._held:
            sink(piece)
        self._held.clear()
        base = self._chunk_base
        start = self._fwd_done - base
        if start < 0:
            start = 0
        if end > base:
            sink(self._chunk[start : end - base])
        self._fwd_done = end

    def _flush_chunk(self, end: int) -> None:
        if self.sink is None:
            return
        if self._dropping:
            self._held.clear()
            self._fwd_done = end
            return
        seq = self._seq_start
        if seq is None:
            self._emit_until(end)
            return
        # Headers of an undecided member: send what precedes them, hold a copy of them.
        self._emit_until(seq)
        base = self._chunk_base
        start = max(seq, self._fwd_done + sum(len(piece) for piece in self._held)) - base
        if start < 0:
            start = 0
        if end - base > start:
            self._held.append(self._chunk[start : end - base].tobytes())


def _signed_sum(block: bytes) -> int:
    """Return the header checksum as some old tars computed it, with signed bytes."""
    values = struct.unpack("148b8x356b", block)
    return sum(values) + 256


def _pax_int(value: bytes, what: str, offset: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise ArchiveError(
            f"The PAX header before byte offset {offset} has an invalid {what} {value!r}."
        ) from None


def _pax_time(value: bytes, offset: int) -> int | float:
    try:
        if b"." in value:
            number = float(value)
            return int(number) if number.is_integer() else number
        return int(value)
    except ValueError:
        raise ArchiveError(
            f"The PAX header before byte offset {offset} has an invalid mtime {value!r}."
        ) from None
