"""Verify an archive without restoring it, or prove it restores (a drill).

Each check returns `{"name", "ok", "detail"}` and never raises for ordinary damage: a
missing, truncated or altered archive gives a failed result whose detail says what is
wrong. Only cancellation (errors.Cancelled) propagates.

- `checksum`: the stored bytes against the manifest's sha256 and the `.sha256` file.
- `contents`: every member against the manifest (paths, types, sizes, per-file sha256).
- `database` (SQLite): the snapshot restored to scratch passes `PRAGMA integrity_check`
  and the configured check queries.

The archive and its manifest are files in a storage (a local folder, an S3 bucket). An
encrypted backup (`….age`) is checksummed without any key: its sidecar holds the sha256
of the encrypted file. Every other check reads the plaintext, so it needs an identity;
without one those checks come back not run (`"ok": False, "skipped": True`), saying so.
"""

from __future__ import annotations

import hashlib
import operator
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .atomic import format_bytes
from .crypto import fingerprint
from .crypto.keys import Identity
from .errors import (
    ArchiveError,
    Cancelled,
    EngineError,
    MissingObjectError,
    NoMatchingIdentityError,
)
from .hooks import Hooks, Progress
from .locations import DIRECTORY, KUBERNETES, POSTGRES, SQLITE
from .manifest import Manifest, load_manifest
from .restore import (
    CHUNK,
    THREAD,
    ArchiveReader,
    ContentCheck,
    ProgressMeter,
    RestoreRequest,
    catalog_mismatch,
    decompress_verified,
    listed,
    member_key,
    payload_limit,
    read_checksum_file,
    reading_mode,
    restore_archive,
    restore_chain,
    scan_archive,
)
from .restore.sqlite_files import QueryRefused, sqlite_read_query
from .storage import Storage, StoredFile, stored_file
from .tarstream import Member, TarScanner

CHECKSUM, CONTENTS, DATABASE, DRILL = "checksum", "contents", "database", "drill"
CHAIN = "chain"
CHECKS = (CHECKSUM, CONTENTS, DATABASE)
_EXPECT = re.compile(r"^\s*(>=|<=|==|!=|=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
_OPERATORS = {
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
}
_LISTED = 5
# How long one check query may run before it is stopped.
QUERY_TIME_S = 60.0


def _result(name: str, ok: bool, detail: str, **extra) -> dict:
    return {"name": name, "ok": ok, "detail": detail, **extra}


def verify_archive(
    *,
    archive: StoredFile | Path | str,
    manifest: StoredFile | Path | str,
    kind: str,
    checks: Sequence[str] = (CHECKSUM, CONTENTS),
    sqlite_queries: Sequence[dict] = (),
    query_time_s: float = QUERY_TIME_S,
    hooks: Hooks,
    catalog_sha256: str | None = None,
    storage: Storage | None = None,
    identities: Sequence[Identity] = (),
    recipients: Sequence[str] = (),
) -> list[dict]:
    """Run the named checks on an archive; return one result per check, failures included.

    `archive` and `manifest` are keys in `storage`, or local paths without one.
    `sqlite_queries` are `{"sql": ..., "expect": "> 0"}` items for the `database` check;
    each may only read, and is stopped after `query_time_s`. `catalog_sha256`, when set,
    is the sha256 recorded apart from the files (the catalog): the checksum check fails
    when the archive, its manifest and its checksum file agree with each other but not
    with it. An encrypted backup is read with `identities`; `recipients` are those the
    catalog recorded for it. Without a fitting identity the checksum check compares the
    stored bytes with the checksum file (and the catalog) alone, and the other checks
    come back not run, with `"skipped": True` and a detail saying the key is needed.
    """
    archive_file = stored_file(archive, storage)
    manifest_file = stored_file(manifest, storage)
    locked = None
    try:
        loaded = load_manifest(manifest_file, identities=identities, recipients=recipients)
    except NoMatchingIdentityError as error:
        loaded, locked = None, _needs_key(archive_file, recipients, identities, error)
    except EngineError as error:
        return [_result(name, False, f"Cannot check: {error}") for name in checks]
    reading = _reading(loaded, identities, recipients)
    results = []
    for name in checks:
        try:
            if name not in CHECKS:
                results.append(
                    _result(name, False, f"Unknown check {name!r}; use {', '.join(CHECKS)}.")
                )
            elif name == CHECKSUM:
                results.append(_checksum(archive_file, loaded, hooks, catalog_sha256))
            elif loaded is None:
                results.append(_result(name, False, locked, skipped=True))
            elif name == CONTENTS:
                results.append(_contents(archive_file, loaded, kind, hooks, reading))
            else:
                results.append(
                    _database(
                        archive_file,
                        manifest_file,
                        kind,
                        sqlite_queries,
                        query_time_s,
                        hooks,
                        catalog_sha256,
                        reading,
                    )
                )
        except Cancelled:
            raise
        except (EngineError, OSError, sqlite3.Error) as error:
            results.append(_result(name, False, _describe(error)))
    return results


def verify_chain(
    *,
    archives: Sequence[StoredFile | Path | str],
    hooks: Hooks,
    storage: Storage | None = None,
) -> dict:
    """Check that every earlier archive of a chain exists and matches its checksum file.

    `archives` are the chain's archives before the one verified, the full first (keys in
    `storage`, or local paths without one). Return one `{"name": "chain", ...}` result.
    """
    for archive in archives:
        archive_file = stored_file(archive, storage)
        try:
            outcome = _checksum(archive_file, None, hooks, None)
        except Cancelled:
            raise
        except (EngineError, OSError) as error:
            outcome = _result(CHECKSUM, False, _describe(error))
        if not outcome["ok"]:
            return _result(
                CHAIN,
                False,
                f"The chain this backup needs is broken: {outcome['detail']} Restoring this "
                "backup needs every archive of its chain; take a full backup.",
            )
    return _result(
        CHAIN,
        True,
        f"The {len(archives)} earlier archive(s) of its chain exist and match their checksum "
        "files.",
    )


def _reading(
    manifest: Manifest | None, identities: Sequence[Identity], recipients: Sequence[str]
) -> dict:
    """Return what an ArchiveReader needs to open the archive this manifest describes."""
    header = manifest.header if manifest is not None else {}
    recorded = (header.get("encryption") or {}).get("recipients", ())
    size = (header.get("archive") or {}).get("size")
    return {
        "identities": tuple(identities),
        "recipients": tuple(recipients or recorded),
        "stored_size": size if isinstance(size, int) else None,
    }


def _needs_key(
    archive: StoredFile,
    recipients: Sequence[str],
    identities: Sequence[Identity],
    error: EngineError,
) -> str:
    """Return why the checks that read the plaintext did not run on an encrypted backup."""
    if identities:
        return f"Not run: {error}"
    whose = f" of one of its recipients ({', '.join(map(fingerprint, recipients))})"
    return (
        f"Not run: {archive.name} is encrypted, and the content checks need the private key "
        f"(AGE_IDENTITY_FILE){whose if recipients else ''}; the checksum check needs none."
    )


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}."
    return str(error)


def _archive_problem(archive: StoredFile, manifest: Manifest | None) -> str | None:
    """Return why the archive file cannot match at all (missing, empty, wrong size)."""
    size = archive.size()
    if size is None:
        return f"The archive {archive} is missing."
    if size == 0:
        return f"The archive {archive} is empty (0 bytes)."
    recorded = manifest.header.get("archive", {}).get("size") if manifest is not None else None
    if isinstance(recorded, int) and recorded != size:
        state = "truncated" if size < recorded else "larger than written"
        return f"The archive {archive.name} is {state}: {size} bytes, the manifest says {recorded}."
    return None


def _checksum(
    archive: StoredFile, manifest: Manifest | None, hooks: Hooks, catalog: str | None
) -> dict:
    """Hash the stored bytes; compare with the manifest (when it was read) and the sidecar."""
    problem = _archive_problem(archive, manifest)
    if problem:
        return _result(CHECKSUM, False, problem)
    recorded = str(manifest.archive_sha256).lower() if manifest is not None else None
    try:
        side = read_checksum_file(archive)
        side_problem = None
    except ArchiveError as error:
        side, side_problem = None, str(error)
    progress = Progress(bytes_total=archive.size(), current=f"hashing {archive.name}")
    digest = hashlib.sha256()
    try:
        handle = archive.open_read()
    except MissingObjectError:
        return _result(CHECKSUM, False, f"The archive {archive} is missing.")
    with handle:
        while True:
            hooks.check()
            chunk = handle.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            progress.bytes_done += len(chunk)
            hooks.progress(progress)
    actual = digest.hexdigest()
    wrong = []
    if recorded is not None and actual != recorded:
        wrong.append(f"the manifest says {recorded}")
    if side is not None and actual != side:
        wrong.append(f"the checksum file says {side}")
    if wrong:
        return _result(
            CHECKSUM,
            False,
            f"The archive {archive.name} is damaged or altered: its sha256 is {actual} but "
            + " and ".join(wrong)
            + ".",
        )
    if side_problem:
        if recorded is None:
            return _result(CHECKSUM, False, f"Nothing to compare the archive with: {side_problem}")
        return _result(
            CHECKSUM, False, f"The archive matches its manifest's sha256, but {side_problem}"
        )
    if catalog and catalog.lower() != actual:
        return _result(CHECKSUM, False, catalog_mismatch(archive.name, actual, catalog))
    if recorded is None:
        also = " and the catalog" if catalog else ""
        return _result(
            CHECKSUM,
            True,
            f"sha256 {actual} matches the checksum file{also} "
            f"({format_bytes(progress.bytes_done)}); the manifest is encrypted and was not "
            "read without the private key.",
        )
    return _result(
        CHECKSUM,
        True,
        f"sha256 {actual} matches the manifest and the checksum file "
        f"({format_bytes(progress.bytes_done)}).",
    )


class _Collector:
    """Compare every member with the manifest, collecting problems instead of stopping."""

    def __init__(self, manifest: Manifest) -> None:
        self.check = ContentCheck(manifest)
        self.extra: list[str] = []
        self.differ: list[str] = []
        self.members = 0
        self._key = ""
        self.files = 0
        self.bytes = 0

    def decide(self, member: Member) -> bool:
        self.members += 1
        self._key = key = member_key(member.raw_name)
        problem = self.check.header(key, member)
        if problem:
            if "not in the manifest" in problem:
                self.extra.append(member.raw_name)
            else:
                self.differ.append(problem)
        return True

    def on_member(self, member: Member) -> None:
        if member.type != "file":
            return
        self.files += 1
        self.bytes += member.size
        check = self.check
        problem = check.data(self._key, member, check.last)  # the key `decide` just made
        if problem:
            self.differ.append(problem)

    def summary(self, *, complete: bool = True) -> tuple[bool, str]:
        # Entries after a read error were never reached: they are not missing.
        missing = self.check.missing() if complete else []
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} entries of the manifest are missing from the archive: "
                f"{listed(missing, _LISTED)}"
            )
        if self.extra:
            parts.append(
                f"{len(self.extra)} members are not in the manifest: {listed(self.extra, _LISTED)}"
            )
        if self.differ:
            shown_ = "; ".join(self.differ[:_LISTED])
            more = f" and {len(self.differ) - _LISTED} more" if len(self.differ) > _LISTED else ""
            parts.append(f"{len(self.differ)} members differ from the manifest: {shown_}{more}")
        if parts:
            return False, ". ".join(parts) + "."
        return True, (
            f"{self.members} members, {self.files} files ({format_bytes(self.bytes)}) match "
            "the manifest: paths, types, sizes and sha256."
        )


def _contents(
    archive: StoredFile, manifest: Manifest, kind: str, hooks: Hooks, reading: dict
) -> dict:
    problem = _archive_problem(archive, manifest)
    if problem:
        return _result(CONTENTS, False, problem)
    if kind == POSTGRES:
        return _dump_contents(archive, manifest, hooks, reading)
    collector = _Collector(manifest)
    progress = Progress(bytes_total=manifest.total_bytes, files_total=manifest.total_files)
    reader = ArchiveReader(
        archive,
        limit=payload_limit(manifest),
        tick=hooks.check,
        mode=reading_mode(manifest),
        **reading,
    )
    scanner = TarScanner(decide=collector.decide, on_member=collector.on_member)

    def after_chunk() -> None:
        progress.bytes_done = scanner.payload_bytes
        progress.files_done = collector.files
        hooks.progress(progress)

    try:
        scan_archive(reader, scanner, expected=None, after_chunk=after_chunk)
    except ArchiveError as error:
        ok, detail = collector.summary(complete=False)
        found = "" if ok else f" Before that: {detail}"
        return _result(
            CONTENTS,
            False,
            f"Reading the archive failed after {collector.members} members: {error}{found}",
        )
    finally:
        reader.close()
    ok, detail = collector.summary()
    return _result(CONTENTS, ok, detail)


def _dump_contents(archive: StoredFile, manifest: Manifest, hooks: Hooks, reading: dict) -> dict:
    """Decompress a pg_dump archive fully: size, sha256 and the custom-format signature."""
    progress = Progress(bytes_total=manifest.total_bytes)
    reader = ArchiveReader(
        archive, limit=manifest.total_bytes, tick=hooks.check, mode=THREAD, **reading
    )
    payload = hashlib.sha256()
    head = b""
    try:
        for chunk in reader.chunks():
            if not head:
                head = chunk[:5]
            payload.update(chunk)
            progress.bytes_done = reader.payload_bytes
            hooks.progress(progress)
    except ArchiveError as error:
        return _result(CONTENTS, False, f"Reading the dump failed: {error}")
    finally:
        reader.close()
    problems = []
    if head != b"PGDMP":
        problems.append("it is not a pg_dump custom-format archive")
    if reader.payload_bytes != manifest.total_bytes:
        problems.append(
            f"it holds {reader.payload_bytes} bytes, the manifest says {manifest.total_bytes}"
        )
    files = [entry for entry in manifest.entries if entry.type == "file" and entry.sha256]
    if len(files) == 1 and files[0].sha256.lower() != payload.hexdigest():
        problems.append("its sha256 differs from the manifest's")
    if problems:
        return _result(CONTENTS, False, f"The dump in {archive.name}: " + "; ".join(problems) + ".")
    return _result(
        CONTENTS,
        True,
        f"The pg_dump ({format_bytes(reader.payload_bytes)}) matches the manifest.",
    )


def _database(
    archive: StoredFile,
    manifest: StoredFile,
    kind: str,
    queries: Sequence[dict],
    time_limit_s: float,
    hooks: Hooks,
    catalog: str | None,
    reading: dict,
) -> dict:
    if kind != SQLITE:
        return _result(
            DATABASE, False, f"The database check applies to SQLite backups, not {kind}."
        )
    scratch = Path(tempfile.mkdtemp(prefix="verify-sqlite-"))
    try:
        target = scratch / "snapshot.db"
        try:
            restore_archive(
                RestoreRequest(
                    archive=archive,
                    manifest=manifest,
                    kind=SQLITE,
                    target=str(target),
                    catalog_sha256=catalog,
                    identities=reading["identities"],
                    recipients=reading["recipients"],
                ),
                hooks,
            )
        except Cancelled:
            raise
        except EngineError as error:
            return _result(DATABASE, False, f"The snapshot cannot be checked: {error}")
        outcomes = [_run_query(target, query, time_limit_s) for query in queries]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ok = all(outcome["ok"] for outcome in outcomes)
    details = ["integrity_check: ok"] + [outcome["detail"] for outcome in outcomes]
    return _result(DATABASE, ok, "; ".join(details) + ".", queries=outcomes)


def _run_query(database: Path, query: dict, time_limit_s: float) -> dict:
    """Run one check query read-only; compare its first value with `expect`."""
    sql = str(query.get("sql", "")).strip()
    expect = str(query.get("expect", "")).strip()
    outcome = {"sql": sql, "expect": expect, "value": None, "ok": False}
    match = _EXPECT.match(expect)
    if not match:
        outcome["detail"] = (
            f"{sql!r}: cannot read the expectation {expect!r}; use e.g. '> 0' or '= 12' "
            "(>, >=, =, ==, !=, <, <=)"
        )
        return outcome
    try:
        row = sqlite_read_query(database, sql, time_limit_s=time_limit_s)
    except QueryRefused as refused:
        outcome["detail"] = f"{sql!r} {refused}"
        return outcome
    except sqlite3.Error as error:
        outcome["detail"] = f"{sql!r} failed: {error}"
        return outcome
    value = None if row is None else row[0]
    outcome["value"] = value
    symbol, number = match.group(1), float(match.group(2))
    try:
        ok = value is not None and _OPERATORS[symbol](float(value), number)
    except (TypeError, ValueError):
        ok = False
    outcome["ok"] = ok
    outcome["detail"] = f"{sql} returned {value!r} (expected {expect}){'' if ok else ': FAILED'}"
    return outcome


def restore_drill(
    *,
    archive: StoredFile | Path | str,
    manifest: StoredFile | Path | str,
    kind: str,
    scratch_dir: Path,
    hooks: Hooks,
    catalog_sha256: str | None = None,
    storage: Storage | None = None,
    identities: Sequence[Identity] = (),
    recipients: Sequence[str] = (),
    chain: Sequence[RestoreRequest] = (),
) -> dict:
    """Restore the archive in full into scratch, verified, timed end to end, then removed.

    `chain` (for a differential or incremental) is the requests of its chain's earlier
    archives, the full first: the drill restores the point through all of them, so its
    time is the real time to restore that point.

    Return `{"name": "drill", "ok", "detail", "duration_s"}`. A PostgreSQL dump is
    restored to an SQL script with pg_restore (every table's data is read), since a drill
    must not need a database server of its own. `catalog_sha256` is checked as a
    restore checks it. `archive` and `manifest` are keys in `storage`, or local paths
    without one; an encrypted backup needs one of `identities`, as a restore does.
    """
    started = time.monotonic()
    scratch_dir = Path(scratch_dir)
    try:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".drill-", dir=scratch_dir))
    except OSError as error:
        return {
            "name": DRILL,
            "ok": False,
            "detail": f"Cannot create scratch space: {_describe(error)}",
            "duration_s": 0.0,
        }
    request = RestoreRequest(
        archive=stored_file(archive, storage),
        manifest=stored_file(manifest, storage),
        kind=kind,
        target="",
        catalog_sha256=catalog_sha256,
        identities=identities,
        recipients=recipients,
    )
    try:
        if chain:
            ok, detail = _drill_chain([*chain, request], scratch, hooks)
        else:
            ok, detail = _drill_into(request, scratch, hooks)
    except Cancelled:
        raise
    except (EngineError, OSError) as error:
        ok, detail = False, f"The restore failed: {_describe(error)}"
    duration = round(time.monotonic() - started, 3)
    shutil.rmtree(scratch, ignore_errors=True)
    if ok:
        detail = f"{detail} in {duration:.1f} s end to end."
    return {"name": DRILL, "ok": ok, "detail": detail, "duration_s": duration}


def _drill_chain(
    requests: Sequence[RestoreRequest], scratch: Path, hooks: Hooks
) -> tuple[bool, str]:
    target = str(scratch / "restored")
    requests = [replace(each, kind=DIRECTORY, target=target) for each in requests]
    result = restore_chain(requests, hooks)
    for line in result.warnings:
        hooks.warn(line)
    return True, (
        f"Restored {result.files} files ({format_bytes(result.bytes)}) from a chain of "
        f"{len(requests)} archives, each file verified against its manifest,"
    )


def _drill_into(request: RestoreRequest, scratch: Path, hooks: Hooks) -> tuple[bool, str]:
    kind = request.kind
    if kind == POSTGRES:
        return _drill_postgres(request, scratch, hooks)
    if kind == SQLITE:
        target, restore_kind = scratch / "restored.db", SQLITE
    elif kind in (DIRECTORY, KUBERNETES):
        target, restore_kind = scratch / "restored", DIRECTORY
    else:
        return False, f"Unknown source kind {kind!r}."
    result = restore_archive(replace(request, kind=restore_kind, target=str(target)), hooks)
    for line in result.warnings:
        hooks.warn(line)
    note = f" ({len(result.warnings)} unsafe members skipped)" if result.warnings else ""
    return True, (
        f"Restored {result.files} files ({format_bytes(result.bytes)}), each verified against "
        f"the manifest{note},"
    )


def _drill_postgres(request: RestoreRequest, scratch: Path, hooks: Hooks) -> tuple[bool, str]:
    loaded = request.load_manifest()
    dump = scratch / "dump.pgdump"
    meter = ProgressMeter(
        hooks, bytes_total=loaded.total_bytes, files_total=1, current="verifying the dump"
    )
    decompress_verified(
        request.archive_file(),
        loaded,
        dump,
        tick=hooks.check,
        meter=meter,
        catalog_sha256=request.catalog_sha256,
        **_reading(loaded, request.identities, request.recipients),
    )
    script = scratch / "restore.sql"
    command = [os.environ.get("PG_RESTORE") or "pg_restore", "--no-owner", "-f", str(script)]
    try:
        done = subprocess.run([*command, str(dump)], capture_output=True, text=True)
    except FileNotFoundError:
        return False, "pg_restore is not installed; the dump's checksum was verified only"
    if done.returncode != 0:
        return False, f"pg_restore could not read the dump: {done.stderr.strip()[-2000:]}"
    return True, (
        f"Verified the dump ({format_bytes(loaded.total_bytes)}) and replayed it with "
        f"pg_restore into an SQL script of {format_bytes(script.stat().st_size)},"
    )
