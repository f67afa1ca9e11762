"""Restore a PostgreSQL database: verify the pg_dump while decompressing it, then pg_restore."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..crypto.keys import Identity
from ..errors import ArchiveError, EngineError, TargetError
from ..manifest import Manifest
from ..storage import StoredFile, stored_file
from .children import kill_group, wait_ticking
from .files import remove_path
from .job import RestoreJob
from .places import PostgresTarget, libpq_env, postgres_target, server_name
from .reader import THREAD, ArchiveReader, expected_sha256, scan_archive
from .request import check_space, check_target, source_location

# Objects a database holds beyond what CREATE DATABASE gives it (schema public, plpgsql).
_USER_OBJECTS = r"""
SELECT
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema')
  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema')
  + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
      AND t.typrelid = 0 AND t.typcategory <> 'A')
  + (SELECT count(*) FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\_%' AND nspname NOT IN ('information_schema', 'public'))
  + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql');
"""
_EXISTS = "SELECT count(*) FROM pg_database WHERE datname = :'name';\n"
_CREATE = 'CREATE DATABASE :"name";\n'
_DROP = 'DROP DATABASE IF EXISTS :"name";\n'


class _DumpWriter:
    """Write a decompressed payload to a file, hashing it on the way (see scan_archive)."""

    def __init__(self, out) -> None:
        self.out = out
        self.sha = hashlib.sha256()

    def feed(self, chunk) -> None:
        self.sha.update(chunk)
        self.out.write(chunk)


def decompress_verified(
    archive: StoredFile | Path,
    manifest: Manifest,
    dest: Path,
    *,
    tick,
    meter,
    catalog_sha256=None,
    identities: Sequence[Identity] = (),
    recipients: Sequence[str] = (),
    stored_size: int | None = None,
) -> str:
    """Decompress a single-payload archive (a pg_dump) into `dest`, verifying as it goes.

    Return the archive's sha256; raise ArchiveError when the archive, its size or (when
    the manifest lists one file) the payload's sha256 does not match, or when the
    archive is not the one whose sha256 the catalog recorded (`catalog_sha256`).
    `identities`, `recipients` and `stored_size` open an encrypted archive.
    """
    archive = stored_file(archive)
    expected = expected_sha256(archive, manifest, catalog_sha256)
    reader = ArchiveReader(
        archive,
        limit=manifest.total_bytes,
        tick=tick,
        mode=THREAD,
        identities=identities,
        recipients=recipients,
        stored_size=stored_size,
    )
    try:
        with open(dest, "wb") as out:
            payload = _DumpWriter(out)
            digest = scan_archive(
                reader,
                payload,
                expected=expected,
                after_chunk=lambda: meter.update(reader.payload_bytes),
                check_end=False,
            )
    finally:
        reader.close()
    if reader.payload_bytes != manifest.total_bytes:
        raise ArchiveError(
            f"The archive {archive.name} holds {reader.payload_bytes} bytes but its "
            f"manifest says {manifest.total_bytes}."
        )
    files = [entry for entry in manifest.entries if entry.type == "file" and entry.sha256]
    if len(files) == 1 and files[0].sha256.lower() != payload.sha.hexdigest():
        raise ArchiveError(f"The dump in {archive.name} does not match its sha256 in the manifest.")
    return digest


def pg_restore_argv(uri: str, dump: Path, *, clean: bool = True) -> list[str]:
    """Return the pg_restore command that loads the dump into the database.

    `clean` (in place only) first drops the database's objects that the dump holds.
    """
    # One transaction: a failure part-way leaves the database as it was. No password
    # prompt: a password comes from the environment or a pgpass file, or not at all.
    return [
        os.environ.get("PG_RESTORE") or "pg_restore",
        *(("--clean", "--if-exists") if clean else ()),
        "--no-owner",
        "--no-password",
        "--single-transaction",
        "--exit-on-error",
        "-d",
        uri,
        os.fspath(dump),
    ]


def restore_postgres(job: RestoreJob) -> str:
    """Load the verified dump with pg_restore, in one transaction; return the URI.

    In place, the dump's objects replace the database's. A new location is a database
    that does not exist yet (it is created) or is empty: nothing there is dropped.
    """
    request = job.request
    check_target(request, job.manifest)
    target = postgres_target(
        request.target,
        source_location=source_location(request, job.manifest),
        servers=request.postgres_servers,
        in_place=request.in_place,
    )
    env = libpq_env(target)
    scratch = Path(tempfile.mkdtemp(prefix="restore-pgdump-"))
    try:
        exists = None if request.in_place else _new_database_exists(target, job, env, scratch)
        check_space(scratch, job.manifest.total_bytes)
        dump = scratch / "dump.pgdump"
        meter = job.meter(f"verifying {job.archive.name}")
        digest = decompress_verified(
            job.archive,
            job.manifest,
            dump,
            tick=job.tick,
            meter=meter,
            catalog_sha256=job.request.catalog_sha256,
            **job.reading_keys(),
        )
        job.passed_checksum(digest)
        meter.progress.current = "pg_restore"
        meter.update(force=True)

        def load() -> None:
            created = exists is False
            if created:
                _psql(_maintenance(target), _CREATE, job, env, scratch, name=target.dbname)
                job.hooks.log(f"Created the database {target.dbname}.")
            argv = pg_restore_argv(request.target, dump, clean=request.in_place)
            try:
                _run_child(argv, job, what="pg_restore", env=env)
            except BaseException:
                if created:
                    _drop_created(target, job, env, scratch)
                raise

        job.publish(load)
        job.files, job.bytes = 1, job.manifest.total_bytes
    finally:
        remove_path(scratch)
    return request.target


def make_conninfo(conninfo: str = "", **params) -> str:
    """psycopg's make_conninfo, imported when a PostgreSQL restore needs it (libpq is slow
    to load, and most commands never do)."""
    from psycopg.conninfo import make_conninfo as make

    return make(conninfo, **params)


def _maintenance(target: PostgresTarget) -> str:
    """Return the conninfo of the target server's `postgres` database."""
    return make_conninfo("", **{**target.params, "dbname": "postgres"})


def _new_database_exists(target: PostgresTarget, job: RestoreJob, env: dict, scratch: Path):
    """Return whether a new location's database exists; refuse one that holds anything."""
    where = f"{target.dbname} on {', '.join(server_name(*server) for server in target.servers)}"
    found = _psql(_maintenance(target), _EXISTS, job, env, scratch, name=target.dbname)
    if found.strip() == "0":
        return False
    objects = _psql(make_conninfo("", **target.params), _USER_OBJECTS, job, env, scratch)
    if objects.strip() != "0":
        raise TargetError(
            f"The database {where} exists and is not empty; a restore to a new location "
            "only fills a new or empty database, and nothing was changed. Name a new "
            "database, or restore over the source in place."
        )
    return True


def _drop_created(target: PostgresTarget, job: RestoreJob, env: dict, scratch: Path) -> None:
    """Drop the database this restore created, after a failure; never raises."""
    try:
        _psql(_maintenance(target), _DROP, job, env, scratch, name=target.dbname)
    except EngineError as error:
        job.warn(f"The database {target.dbname} created for the restore was left: {error}")


def _psql(conninfo: str, sql: str, job: RestoreJob, env: dict, scratch: Path, **values) -> str:
    """Run `sql` through psql (`:'name'` and `:"name"` quote `values`); return its output."""
    script = scratch / "query.sql"
    script.write_text(sql)
    argv = [os.environ.get("PSQL") or "psql", "-X", "--no-password", "-q", "-A", "-t"]
    argv += ["-v", "ON_ERROR_STOP=1"]
    for key, value in values.items():
        argv += ["-v", f"{key}={value}"]
    return _run_child([*argv, "-d", conninfo, "-f", os.fspath(script)], job, what="psql", env=env)


def _run_child(argv: list[str], job: RestoreJob, *, what: str, env: dict) -> str:
    """Run a command to completion, checking for cancellation; return its output."""
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=env,
                start_new_session=True,  # so a timeout or cancel kills all it started
            )
        except FileNotFoundError:
            raise EngineError(f"{argv[0]} is not installed or not on PATH.") from None
        job.deadline.watch(proc)
        try:
            code = wait_ticking(proc, job.tick)
        except BaseException:
            kill_group(proc)
            proc.wait()
            raise
        output.seek(0)
        text = output.read().decode("utf-8", "replace").strip()
    if code != 0:
        raise EngineError(
            f"{what} failed (exit status {code}); nothing was changed: {text[-4000:]}"
        )
    return text
