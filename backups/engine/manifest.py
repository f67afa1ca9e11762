"""Manifests: what an archive holds, file by file, kept as JSON beside it.

The format is part of the contract (`format`, `run`, `source`, `started_at`, `finished_at`,
`archive`, `totals`, `entries`). Paths are relative to the source root; bytes that are not
valid UTF-8 are kept as Python surrogate escapes, which JSON writes as `\\udcXX`, so any name
round-trips exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from .atomic import AtomicFile, raise_if_no_space
from .errors import ArchiveError, UnsupportedFormatError

FORMAT = 1
FILE, DIR, SYMLINK, HARDLINK = "file", "dir", "symlink", "hardlink"
TYPES = (FILE, DIR, SYMLINK, HARDLINK)


class Entry(msgspec.Struct):
    """One member of an archive. `sha256` is set for files, `target` for links.

    A msgspec Struct, so `load_manifest` decodes a manifest's entries straight into it.
    """

    path: str
    type: str
    size: int = 0
    mode: int = 0
    mtime: int | float = 0
    sha256: str | None = None
    target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the contract's JSON object for this entry."""
        return {
            "path": self.path,
            "type": self.type,
            "size": self.size,
            "mode": self.mode,
            "mtime": self.mtime,
            "sha256": self.sha256,
            "target": self.target,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        """Build an entry from its JSON object."""
        # Positional: a third faster than keywords, and a manifest can list a million entries.
        return cls(
            data["path"],
            data["type"],
            int(data.get("size") or 0),
            int(data.get("mode") or 0),
            data.get("mtime") or 0,
            data.get("sha256"),
            data.get("target"),
        )


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

    def by_path(self) -> dict[str, Entry]:
        """Return the entries keyed by path."""
        return {entry.path: entry for entry in self.entries}


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
        f'"target":{"null" if target is None else _json_str(target)}}}'
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
        """Yield the recorded entries in order."""
        for line in self._iter_json():
            yield Entry.from_dict(line)

    def _iter_json(self) -> Iterator[dict[str, Any]]:
        self._flush()
        self._file.seek(0)
        for line in self._file:
            line = line.strip().rstrip(b",").lstrip(b",")
            if line:
                yield json.loads(line)
        self._file.seek(0, os.SEEK_END)

    def write(self, out: BinaryIO, header: dict[str, Any]) -> None:
        """Write the manifest JSON: header fields, totals, then every entry."""
        self._flush()
        head = dict(header, format=FORMAT, totals={"files": self.files, "bytes": self.bytes})
        text = json.dumps(head, indent=1)
        out.write(text[:-2].encode() + b',\n "entries": [\n')
        self._file.seek(0)
        while chunk := self._file.read(1 << 20):
            out.write(chunk)
        out.write(b"\n ]\n}\n")
        self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        self._file.close()


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


class _ManifestFile(msgspec.Struct, forbid_unknown_fields=True):
    """A manifest with the contract's fields only, for the fast path of `load_manifest`."""

    format: int
    archive: dict[str, Any]
    totals: dict[str, Any]
    entries: list[Entry] = []
    run: Any = msgspec.UNSET
    source: Any = msgspec.UNSET
    started_at: Any = msgspec.UNSET
    finished_at: Any = msgspec.UNSET
    trigger: Any = msgspec.UNSET


_HEADER_FIELDS = tuple(name for name in _ManifestFile.__struct_fields__ if name != "entries")
_decode_fast = msgspec.json.Decoder(_ManifestFile).decode


def load_manifest(path: Path) -> Manifest:
    """Read a manifest, refusing a newer format or a damaged file with a clear message.

    msgspec decodes the entries straight into Entry objects, about five times faster than
    json plus Entry.from_dict, which counts with a million entries. A file it does not
    take (names that are not UTF-8, written as surrogate escapes; fields beyond the
    contract's; null sizes) is read by the standard library instead, which takes every
    manifest this version wrote or says what is wrong with it.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ArchiveError(
            f"The manifest {path} is missing; run import_archives or verify the archive."
        ) from None
    except OSError as error:
        raise ArchiveError(
            f"The manifest {path} cannot be read: {error.strerror or error}. Check that this "
            "user may read the archive folder."
        ) from None
    try:
        fast = _decode_fast(raw)
    except msgspec.MsgspecError:
        pass
    else:
        header = {name: getattr(fast, name) for name in _HEADER_FIELDS}
        header = {name: value for name, value in header.items() if value is not msgspec.UNSET}
        return _manifest(header, fast.entries, path)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ArchiveError(f"The manifest {path} is damaged and cannot be read: {error}") from None
    return parse_manifest(data, path)


def parse_manifest(data: Any, origin: Path | str = "manifest") -> Manifest:
    """Validate a decoded manifest object and return it."""
    if not isinstance(data, dict) or "format" not in data:
        raise ArchiveError(f"{origin} is not a backup manifest (no 'format' field).")
    try:
        entries = [Entry.from_dict(item) for item in data.get("entries", [])]
    except (KeyError, TypeError, ValueError) as error:
        raise ArchiveError(f"{origin} is missing a required field: {error}") from None
    header = {key: value for key, value in data.items() if key != "entries"}
    return _manifest(header, entries, origin)


def _manifest(header: dict[str, Any], entries: list[Entry], origin: Path | str) -> Manifest:
    """Check a manifest's format and required header fields; return it."""
    fmt = header["format"]
    if not isinstance(fmt, int) or fmt < 1:
        raise ArchiveError(f"{origin} has an invalid manifest format {fmt!r}.")
    if fmt > FORMAT:
        raise UnsupportedFormatError(
            f"{origin} uses manifest format {fmt}, newer than the {FORMAT} this version "
            "reads; upgrade the backup control plane to read it."
        )
    try:
        header["archive"]["sha256"]  # noqa: B018 - required field
        header["totals"]["bytes"]  # noqa: B018 - required field
    except (KeyError, TypeError) as error:
        raise ArchiveError(f"{origin} is missing a required field: {error}") from None
    return Manifest(header=header, entries=entries)


def sidecar_text(sha256: str, archive_name: str) -> bytes:
    """Return the `.sha256` sidecar contents, in `sha256sum -c` format."""
    return f"{sha256}  {archive_name}\n".encode()


def read_sidecar(path: Path) -> str:
    """Return the hex digest recorded in a `.sha256` sidecar."""
    try:
        text = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        raise ArchiveError(f"The checksum file {path} is missing.") from None
    digest = text.split()[0] if text else ""
    if len(digest) != 64:
        raise ArchiveError(f"The checksum file {path} is damaged: {text[:80]!r}.")
    return digest.lower()


def iter_manifest(path: Path) -> tuple[dict[str, Any], Iterator[Entry]]:
    """Return a manifest's header and an iterator over its entries, in flat memory.

    Manifests written by EntrySpool keep one entry per line after `"entries": [`, which is
    read line by line; any other valid layout falls back to a full JSON parse.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    except FileNotFoundError:
        raise ArchiveError(f"The manifest {path} is missing.") from None
    head = bytearray()
    for line in handle:
        if line.strip() == b'"entries": [':
            break
        head += line
    else:
        handle.close()
        manifest = load_manifest(path)
        return manifest.header, iter(manifest.entries)
    try:
        header = json.loads(bytes(head).rstrip().rstrip(b",") + b"}")
    except ValueError as error:
        handle.close()
        raise ArchiveError(f"The manifest {path} is damaged and cannot be read: {error}") from None
    header = parse_manifest(header, path).header

    def entries() -> Iterator[Entry]:
        with handle:
            for line in handle:
                line = line.strip()
                if line == b"]":
                    return
                if line:
                    try:
                        yield Entry.from_dict(json.loads(line.rstrip(b",")))
                    except (ValueError, KeyError) as error:
                        raise ArchiveError(f"The manifest {path} is damaged: {error}") from None
            raise ArchiveError(f"The manifest {path} is truncated.")

    return header, entries()
