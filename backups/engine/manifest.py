"""Manifests: what an archive holds, file by file, kept as JSON beside it.

The format is part of the contract (`format`, `run`, `source`, `started_at`, `finished_at`,
`archive`, `totals`, `entries`). Format 2 adds a backup's `level` (full, differential,
incremental); a delta (a differential or an incremental) also names its `base` and its
chain's `full` (run ids) and lists the paths `deleted` since the base, and its entries are
only the new and changed ones. Entries gain `mtime_ns`, `ino` and `ctime_ns`, what change
detection compares; they are optional, so format 1 still reads. Paths are relative to the
source root; bytes that are not valid UTF-8 are kept as Python surrogate escapes, which JSON
writes as `\\udcXX`, so any name round-trips exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring_ascii as _json_str
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

import msgspec
from msgspec import Meta

from .atomic import AtomicFile, raise_if_no_space
from .crypto import SUFFIX as AGE_SUFFIX
from .crypto import THREAD, DecryptingReader, check_identities, decrypt_bytes
from .crypto.keys import Identity
from .errors import ArchiveError, MissingObjectError, UnsupportedFormatError
from .locations import KINDS
from .storage.stored import StoredFile

FORMAT = 2
FULL, DIFFERENTIAL, INCREMENTAL = "full", "differential", "incremental"
LEVELS = (FULL, DIFFERENTIAL, INCREMENTAL)
FILE, DIR, SYMLINK, HARDLINK = "file", "dir", "symlink", "hardlink"
SUFFIX = ".manifest.json"
# A manifest is read whole by load_manifest: a million entries take about 200 MB.
MAX_MANIFEST_BYTES = 4 << 30
# A checksum file holds one line: 64 hex digits, two spaces and the archive's name.
MAX_SIDECAR_BYTES = 4096


def manifest_name(stem: str, *, encrypted: bool = False) -> str:
    """Return the manifest's file name for an archive stem: `<stem>.manifest.json[.age]`."""
    return f"{stem}{SUFFIX}{AGE_SUFFIX if encrypted else ''}"


def is_encrypted(name: str) -> bool:
    """Return whether a file name (an archive's or a manifest's) says it is age-encrypted."""
    return name.endswith(AGE_SUFFIX)


# Bounds that keep every value usable downstream: a size and a count fit a 64-bit
# column; an mtime is a date every time zone can show (1900 to the end of 9999).
MAX_INT64 = 2**63 - 1
MTIME_MIN = -2_208_988_800
MTIME_MAX = 253_402_214_399
_Count = Annotated[int, Meta(ge=0, le=MAX_INT64)]
_Mode = Annotated[int, Meta(ge=0, le=0o7777)]
_Mtime = (
    Annotated[int, Meta(ge=MTIME_MIN, le=MTIME_MAX)]
    | Annotated[float, Meta(ge=MTIME_MIN, le=MTIME_MAX)]
)
_Sha256 = Annotated[str, Meta(pattern="^[0-9a-fA-F]{64}$")]
_Text = Annotated[str, Meta(min_length=1)]


class Entry(msgspec.Struct):
    """One member of an archive. `sha256` is set for files, `target` for links.

    A msgspec Struct: decoding a manifest into it checks every field's type and bounds
    (type one of the four, size >= 0, mode 0..0o7777, mtime a representable date, sha256
    64 hex digits or null), so what is loaded is valid. Built in Python (by a backup), it
    checks nothing, at no cost.
    """

    path: _Text
    type: Literal["file", "dir", "symlink", "hardlink"]
    size: _Count = 0
    mode: _Mode = 0
    mtime: _Mtime = 0
    sha256: _Sha256 | None = None
    target: str | None = None
    mtime_ns: int | None = None
    ino: _Count | None = None
    ctime_ns: int | None = None


def clamp_mtime(mtime: int | float) -> int | float:
    """Return `mtime` within the range a manifest accepts.

    A file system can hold a date no calendar shows (tmpfs takes any 64-bit time); the
    archive keeps the true one, the manifest the nearest it can read back.
    """
    if MTIME_MIN <= mtime <= MTIME_MAX:
        return mtime
    return MTIME_MIN if mtime < MTIME_MIN else MTIME_MAX


class SourceInfo(msgspec.Struct):
    """The header's `source`: what was backed up."""

    name: _Text
    kind: Literal[KINDS]
    location: str = ""


class ArchiveInfo(msgspec.Struct):
    """The header's `archive`: the file beside the manifest and its checksum."""

    name: _Text
    sha256: _Sha256
    size: _Count | msgspec.UnsetType = msgspec.UNSET
    compression: str | msgspec.UnsetType = msgspec.UNSET


class Totals(msgspec.Struct):
    """The header's `totals`: regular files and their bytes."""

    files: _Count
    bytes: _Count


class Encryption(msgspec.Struct):
    """The header's `encryption`: the archive and manifest are age files for `recipients`."""

    format: Literal["age"]
    recipients: list[_Text]


@dataclass
class Manifest:
    """A loaded manifest: the header fields and the entries."""

    header: dict[str, Any]
    entries: list[Entry] = field(default_factory=list)

    @property
    def archive_sha256(self) -> str:
        return self.header["archive"]["sha256"]

    @property
    def total_bytes(self) -> int:
        return int(self.header["totals"]["bytes"])

    @property
    def total_files(self) -> int:
        return int(self.header["totals"]["files"])

    @property
    def level(self) -> str:
        """Return the backup's level; a format-1 manifest is always a full."""
        return self.header.get("level", FULL)

    @property
    def base(self) -> int | None:
        """Return the run id a delta is relative to (None for a full)."""
        return self.header.get("base")

    @property
    def deleted(self) -> list[str]:
        """Return the paths a delta records as gone since its base."""
        return self.header.get("deleted", [])


def _encode_entry(entry: Entry) -> str:
    """Return the compact JSON of an entry, exactly as json.dumps writes it, only faster.

    A backup spools one entry per file, 50,000 of them for a tree of small files; the
    generic encoder's cost per call showed up in the benchmark.
    """
    mtime = entry.mtime
    sha256 = entry.sha256
    target = entry.target
    return (
        f'{{"path":{_json_str(entry.path)},"type":{_json_str(entry.type)},'
        f'"size":{int(entry.size)},"mode":{int(entry.mode)},'
        f'"mtime":{mtime if type(mtime) is int else json.dumps(mtime)},'
        f'"sha256":{"null" if sha256 is None else _json_str(sha256)},'
        f'"target":{"null" if target is None else _json_str(target)}'
        + (
            ""
            if entry.mtime_ns is None
            else f',"mtime_ns":{int(entry.mtime_ns)},"ino":{int(entry.ino or 0)},'
            f'"ctime_ns":{int(entry.ctime_ns or 0)}'
        )
        + "}"
    )


class EntrySpool:
    """Collect entries on disk as they are found, so memory stays flat on huge trees.

    `totals` counts regular files and their bytes; `write` streams the full manifest.
    """

    def __init__(self, folder: Path | None = None) -> None:
        # Closed by close(); the spool lives as long as the backup that fills it.
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".manifest-spool-")  # noqa: SIM115
        self._buffer: list[str] = []
        self.count = 0
        self.files = 0
        self.bytes = 0

    def add(self, entry: Entry) -> None:
        """Record one entry."""
        if entry.type == FILE:
            self.files += 1
            self.bytes += entry.size
        self._buffer.append(_encode_entry(entry))
        self.count += 1
        if len(self._buffer) >= 4096:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            prefix = b",\n" if self.count > len(self._buffer) else b""
            self._file.write(prefix + ",\n".join(self._buffer).encode())
            self._buffer.clear()

    def entries(self) -> Iterator[Entry]:
        """Yield the recorded entries in order, decoded as a manifest's lines are.

        Each call reads on its own (positioned reads), so several may be under way.
        """
        self._flush()
        self._file.flush()
        descriptor = self._file.fileno()
        offset, rest, index = 0, b"", 0
        decode = _decode_entry
        while True:
            chunk = os.pread(descriptor, 1 << 20, offset)
            offset += len(chunk)
            data = rest + chunk
            lines = data.split(b"\n")
            rest = lines.pop() if chunk else b""
            # Lines free of NUL escapes decode straight; any fault goes the checked way,
            # which raises what it raises for any manifest.
            checked = b"\\u0000" in data
            for line in lines:
                line = line.strip().rstrip(b",")
                if not line:
                    continue
                if checked:
                    yield _read_entry(line, index, "the manifest spool")
                else:
                    try:
                        entry = decode(line)
                    except msgspec.MsgspecError:
                        entry = _read_entry(line, index, "the manifest spool")
                    yield entry
                index += 1
            if not chunk:
                return

    def header(self, header: dict[str, Any]) -> dict[str, Any]:
        """Return the manifest header `write` writes for `header`: format and totals added."""
        return dict(header, format=FORMAT, totals={"files": self.files, "bytes": self.bytes})

    def reader(self, header: dict[str, Any], origin: str) -> ManifestReader:
        """Return the manifest this spool and `header` make, readable while the spool is open.

        A backup hands it to whoever indexes the catalog: the plaintext it produced, so a
        host with only the public key fills the catalog of an encrypted backup too.
        """
        # Validated and typed as a header read back from the file is (dates as datetimes).
        checked = parse_manifest({**self.header(header), "entries": []}, origin).header
        return ManifestReader(origin=origin, header=checked, opener=self.entries)

    def write(self, out: BinaryIO, header: dict[str, Any]) -> None:
        """Write the manifest JSON: header fields, totals, then every entry."""
        self._flush()
        text = json.dumps(self.header(header), indent=1)
        out.write(text[:-2].encode() + b',\n "entries": [\n')
        self._file.seek(0)
        while chunk := self._file.read(1 << 20):
            out.write(chunk)
        out.write(b"\n ]\n}\n")
        self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        self._file.close()


@dataclass
class ManifestReader:
    """A manifest to read more than once in flat memory: its header, and its entries anew
    on each call of `entries` (from a file, or from a running backup's spool)."""

    origin: str
    header: dict[str, Any]
    opener: Callable[[], Iterator[Entry]] = field(repr=False)

    def entries(self) -> Iterator[Entry]:
        """Yield the entries in the manifest's order."""
        return self.opener()

    def __str__(self) -> str:
        return self.origin


def open_manifest(
    where: Path | StoredFile,
    *,
    identities: Sequence[Identity] = (),
    recipients: Sequence[str] = (),
) -> ManifestReader:
    """Return a manifest file as a ManifestReader: validated header now, entries on demand.

    An encrypted manifest is decrypted with `identities` each time it is read (see
    `iter_manifest`); nothing stays open between reads.
    """
    header, first = iter_manifest(where, identities=identities, recipients=recipients)
    # A generator closes its file only once started: start it, so that closing it does.
    # (A manifest of another layout comes back loaded whole: a plain iterator.)
    next(first, None)
    close = getattr(first, "close", None)
    if close is not None:
        close()

    def entries() -> Iterator[Entry]:
        return iter_manifest(where, identities=identities, recipients=recipients)[1]

    return ManifestReader(origin=str(where), header=header, opener=entries)


def write_manifest(final: Path, header: dict[str, Any], spool: EntrySpool) -> None:
    """Write `final` crash-safely (temp, fsync, rename) from a header and a spool."""
    with AtomicFile(final) as out:
        try:
            spool.write(out.file, header)
        except OSError as error:
            raise_if_no_space(error, final)
            raise
        out.finish()
        out.publish()


def build_spool(entries: Iterable[Entry]) -> EntrySpool:
    """Return a spool holding `entries` (for small, already known lists)."""
    spool = EntrySpool()
    for entry in entries:
        spool.add(entry)
    return spool


class _Header(msgspec.Struct):
    """The header of a manifest: the contract's fields, typed and bounded."""

    format: Annotated[int, Meta(ge=1)]
    archive: ArchiveInfo
    totals: Totals
    run: Annotated[int, Meta(ge=1, le=MAX_INT64)] | msgspec.UnsetType = msgspec.UNSET
    source: SourceInfo | msgspec.UnsetType = msgspec.UNSET
    started_at: Annotated[datetime, Meta(tz=True)] | msgspec.UnsetType = msgspec.UNSET
    finished_at: Annotated[datetime, Meta(tz=True)] | msgspec.UnsetType = msgspec.UNSET
    trigger: _Text | msgspec.UnsetType = msgspec.UNSET
    encryption: Encryption | msgspec.UnsetType = msgspec.UNSET
    level: Literal[LEVELS] | msgspec.UnsetType = msgspec.UNSET
    base: Annotated[int, Meta(ge=1, le=MAX_INT64)] | msgspec.UnsetType = msgspec.UNSET
    full: Annotated[int, Meta(ge=1, le=MAX_INT64)] | msgspec.UnsetType = msgspec.UNSET
    deleted: list[_Text] | msgspec.UnsetType = msgspec.UNSET
    excludes: list[str] | msgspec.UnsetType = msgspec.UNSET


class _Document(_Header):
    """A whole manifest: its header and its entries."""

    entries: list[Entry] = []


class _StrictDocument(_Document, forbid_unknown_fields=True):
    """A manifest with the contract's fields only: the one decoding a fast path takes."""


_HEADER_FIELDS = _Header.__struct_fields__
_decode_strict = msgspec.json.Decoder(_StrictDocument).decode
_decode_lenient = msgspec.json.Decoder(_Document).decode
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_entry = msgspec.json.Decoder(Entry).decode
_WHERE = re.compile(r"^(.*) - at `(\$[^`]*)`$", re.DOTALL)
# A JSON NUL escape that is not itself an escaped backslash followed by "u0000".
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _invalid(origin: Path | str, error: msgspec.ValidationError, prefix: str = "") -> ArchiveError:
    """Turn msgspec's complaint into a sentence naming the file, the field and the fault."""
    match = _WHERE.match(str(error))
    what, where = (match.group(1), match.group(2)) if match else (str(error), "$")
    where = (prefix + where.removeprefix("$")).lstrip(".") or "the top level"
    return ArchiveError(
        f"The manifest {origin} is not valid at {where}: {what[:1].lower()}{what[1:]}. It "
        "is not a manifest this program wrote, or it was altered; use another backup, or "
        "take a new one."
    )


def _check_format(fmt: Any, origin: Path | str) -> None:
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT:
        raise UnsupportedFormatError(
            f"{origin} uses manifest format {fmt}, newer than the {FORMAT} this version "
            "reads; upgrade the backup control plane to read it."
        )


def _check_nul(raw: bytes, origin: Path | str) -> None:
    if b"\\u0000" in raw and _NUL.search(raw):
        raise ArchiveError(
            f"The manifest {origin} is not valid: it holds a NUL character, which no file "
            "name or field may contain. Use another backup, or take a new one."
        )


def _check_names(entries: list[Entry], origin: Path | str, first: int = 0) -> None:
    """Refuse a surrogate that no file name decodes to (only JSON escapes can write one)."""
    for index, entry in enumerate(entries, first):
        for name, value in (("path", entry.path), ("target", entry.target)):
            if value is None:
                continue
            try:
                value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise ArchiveError(
                    f"The manifest {origin} is not valid at entries[{index}].{name}: it "
                    "holds a Unicode surrogate that stands for no byte of a file name. Use "
                    "another backup, or take a new one."
                ) from None


def _header_of(document: _Header, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the header as a dict of plain values (dates as datetimes), extras kept."""
    header = dict(extra or {})
    for name in _HEADER_FIELDS:
        value = getattr(document, name)
        if value is not msgspec.UNSET:
            header[name] = msgspec.to_builtins(value, builtin_types=(datetime,))
    return header


def _entry_from(data: Any, index: int, origin: Path | str) -> Entry:
    try:
        return msgspec.convert(data, Entry)
    except msgspec.ValidationError as error:
        raise _invalid(origin, error, f"entries[{index}]") from None


def load_manifest(
    where: Path | StoredFile,
    *,
    identities: Sequence[Identity] = (),
    recipients: Sequence[str] = (),
) -> Manifest:
    """Read and validate a manifest; refuse a newer format or a damaged or invalid file.

    `where` is a local path or a file in a storage. A manifest named `….age` is decrypted
    with `identities` (`recipients`, those recorded for it, name the keys it needs when
    none of them fits); see `load_manifest_bytes` for the checks.
    """
    origin = str(where)
    if is_encrypted(_name_of(where)):
        check_identities(f"The manifest {origin}", recipients, identities)
    if isinstance(where, StoredFile):
        try:
            raw = where.read_all(limit=MAX_MANIFEST_BYTES)
        except MissingObjectError:
            raise ArchiveError(_missing_manifest(origin)) from None
    else:
        try:
            with open(where, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raise ArchiveError(_missing_manifest(origin)) from None
        except OSError as error:
            raise ArchiveError(_unreadable_manifest(origin, error)) from None
    if is_encrypted(_name_of(where)):
        raw = decrypt_bytes(raw, identities, what=f"The manifest {origin}", recipients=recipients)
    return load_manifest_bytes(raw, origin)


def _name_of(where: Path | StoredFile) -> str:
    return where.name if isinstance(where, StoredFile) else Path(where).name


def _missing_manifest(origin: str) -> str:
    return f"The manifest {origin} is missing; run import_archives or verify the archive."


def _unreadable_manifest(origin: str, error: OSError) -> str:
    return (
        f"The manifest {origin} cannot be read: {error.strerror or error}. Check that this "
        "user may read the archive folder."
    )


def load_manifest_bytes(raw: bytes | bytearray, origin: Path | str) -> Manifest:
    """Validate the plaintext of a manifest; `origin` names it in messages.

    Decoding is validation: every field is checked against the schema (`Entry`,
    `_Header`) by msgspec, about five times faster than json plus Python checks, which
    counts with a million entries. A file msgspec's JSON reader does not take (names that
    are not UTF-8, written as surrogate escapes) is read by the standard library and then
    checked against the same schema.
    """
    _check_nul(raw, origin)
    try:
        document = _decode_strict(raw)
    except msgspec.ValidationError:
        return _load_lenient(raw, origin)
    except msgspec.DecodeError:
        return _load_standard(raw, origin)
    _check_format(document.format, origin)
    return Manifest(header=_header_of(document), entries=document.entries)


def _load_lenient(raw: bytes | bytearray, path: Path | str) -> Manifest:
    """Load a manifest the strict decoding refused: a newer format, extra fields, or a fault."""
    try:
        fields = _decode_fields(raw)
    except msgspec.DecodeError:
        return _load_standard(raw, path)
    if "format" not in fields:
        raise ArchiveError(f"{path} is not a backup manifest (no 'format' field).")
    _check_format(msgspec.json.decode(fields["format"]), path)
    try:
        document = _decode_lenient(raw)
    except msgspec.ValidationError as error:
        raise _invalid(path, error) from None
    extra = {
        name: json.loads(bytes(value))
        for name, value in fields.items()
        if name not in _Document.__struct_fields__
    }
    return Manifest(header=_header_of(document, extra), entries=document.entries)


def _load_standard(raw: bytes | bytearray, path: Path | str) -> Manifest:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ArchiveError(f"The manifest {path} is damaged and cannot be read: {error}") from None
    return parse_manifest(data, path)


def parse_manifest(data: Any, origin: Path | str = "manifest") -> Manifest:
    """Validate a decoded manifest object against the schema and return it."""
    if not isinstance(data, dict) or "format" not in data:
        raise ArchiveError(f"{origin} is not a backup manifest (no 'format' field).")
    _check_format(data["format"], origin)
    try:
        document = msgspec.convert(data, _Document)
    except msgspec.ValidationError as error:
        raise _invalid(origin, error) from None
    _check_names(document.entries, origin)
    extra = {key: value for key, value in data.items() if key not in _Document.__struct_fields__}
    return Manifest(header=_header_of(document, extra), entries=document.entries)


def sidecar_text(sha256: str, archive_name: str) -> bytes:
    """Return the `.sha256` sidecar contents, in `sha256sum -c` format."""
    return f"{sha256}  {archive_name}\n".encode()


def read_sidecar(path: Path) -> str:
    """Return the hex digest recorded in a `.sha256` sidecar."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArchiveError(f"The checksum file {path} is missing.") from None
    return parse_sidecar(raw, path)


def parse_sidecar(raw: bytes, origin: Path | str) -> str:
    """Return the hex digest at the start of a checksum file's bytes; `origin` names it."""
    text = raw.decode("utf-8", "replace").strip()
    digest = text.split()[0] if text else ""
    if len(digest) != 64 or any(char not in "0123456789abcdefABCDEF" for char in digest):
        raise ArchiveError(f"The checksum file {origin} is damaged: {text[:80]!r}.")
    return digest.lower()


def iter_manifest(
    where: Path | StoredFile,
    *,
    identities: Sequence[Identity] = (),
    recipients: Sequence[str] = (),
) -> tuple[dict[str, Any], Iterator[Entry]]:
    """Return a manifest's validated header and an iterator over its entries, in flat memory.

    Manifests written by EntrySpool keep one entry per line after `"entries": [`, which is
    read line by line, each line checked against the schema as it is decoded (a bad one
    raises ArchiveError when reached); any other valid layout falls back to a full load.
    `where`, `identities` and `recipients` are as for `load_manifest`: an encrypted
    manifest is decrypted as it is read.
    """
    path = str(where)
    handle, stack = _open_lines(where, identities, recipients)
    head = bytearray()
    try:
        for line in handle:
            if line.strip() == b'"entries": [':
                break
            head += line
        else:
            stack.close()
            manifest = load_manifest(where, identities=identities, recipients=recipients)
            return manifest.header, iter(manifest.entries)
        _check_nul(bytes(head), path)
        try:
            data = json.loads(bytes(head).rstrip().rstrip(b",") + b"}")
        except ValueError as error:
            raise ArchiveError(
                f"The manifest {path} is damaged and cannot be read: {error}"
            ) from None
        header = parse_manifest(data, path).header
    except BaseException:
        stack.close()
        raise

    def entries() -> Iterator[Entry]:
        with stack:
            index = 0
            for line in handle:
                line = line.strip()
                if line == b"]":
                    return
                if line:
                    yield _read_entry(line.rstrip(b","), index, path)
                    index += 1
            raise ArchiveError(f"The manifest {path} is truncated.")

    return header, entries()


def _open_lines(
    where: Path | StoredFile, identities: Sequence[Identity], recipients: Sequence[str]
) -> tuple[io.BufferedReader, contextlib.ExitStack]:
    """Open a manifest for reading line by line, decrypting it on the way if it is `.age`."""
    origin = str(where)
    encrypted = is_encrypted(_name_of(where))
    if encrypted:
        check_identities(f"The manifest {origin}", recipients, identities)
    stack = contextlib.ExitStack()
    try:
        if isinstance(where, StoredFile):
            try:
                raw = stack.enter_context(where.open_read())
            except MissingObjectError:
                raise ArchiveError(f"The manifest {origin} is missing.") from None
        else:
            try:
                raw = stack.enter_context(open(where, "rb", buffering=0))  # noqa: SIM115
            except FileNotFoundError:
                raise ArchiveError(f"The manifest {origin} is missing.") from None
            except OSError as error:
                raise ArchiveError(_unreadable_manifest(origin, error)) from None
        if encrypted:
            raw = DecryptingReader(
                raw,
                identities,
                what=f"The manifest {origin}",
                recipients=recipients,
                mode=THREAD,
            )
            stack.callback(raw.close)
        return io.BufferedReader(raw, 1 << 20), stack
    except BaseException:
        stack.close()
        raise


def _read_entry(line: bytes, index: int, origin: Path | str) -> Entry:
    """Decode one entry's line of a manifest, checked against the schema."""
    _check_nul(line, origin)
    try:
        return _decode_entry(line)
    except msgspec.ValidationError as error:
        raise _invalid(origin, error, f"entries[{index}]") from None
    except msgspec.DecodeError:
        pass
    try:
        data = json.loads(line)
    except ValueError as error:
        raise ArchiveError(f"The manifest {origin} is damaged: {error}") from None
    entry = _entry_from(data, index, origin)
    _check_names([entry], origin, index)
    return entry
