"""Back up a PostgreSQL database with `pg_dump --format=custom`, compressed by us.

pg_dump runs uncompressed (`-Z0`) and its output goes through our zstd: about 5x faster
than pg_dump's own zlib and smaller. The archive is `<stem>.pgdump.zst`, which
`zstd -d | pg_restore` reads; the manifest has one entry, `<dbname>.pgdump`, with the
size and sha256 of the uncompressed dump. The password never appears in the location:
libpq reads it from PGPASSWORD or a pgpass file.
"""

from __future__ import annotations

import hashlib
import subprocess
import time

from ..errors import SourceError
from ..locations import POSTGRES, check_postgres_uri
from ..manifest import FILE, Entry
from .base import Command, Output, Plan, SourceDriver, command_env


class PostgresDriver(SourceDriver):
    """A PostgreSQL database named by a libpq URI."""

    payload = "pgdump"

    def __init__(self, location: str) -> None:
        try:
            self.dbname = check_postgres_uri(location)
        except ValueError as error:
            raise SourceError(str(error)) from None
        self.location = location

    def plan(self) -> Plan:
        """Return the database's size as the server reports it (a dump is one file)."""
        try:
            result = subprocess.run(
                [
                    "psql",
                    "--no-password",
                    "--no-psqlrc",
                    "--tuples-only",
                    "--no-align",
                    "--dbname",
                    self.location,
                    "--command",
                    "SELECT pg_database_size(current_database())",
                ],
                capture_output=True,
                env=command_env(),
                timeout=60,
            )
        except FileNotFoundError:
            raise SourceError("psql was not found on this worker's PATH; install it.") from None
        if result.returncode != 0:
            message = result.stderr.decode("utf-8", "replace").strip()
            raise SourceError(f"Cannot reach the database {self.location}: {message}")
        size = int(result.stdout.strip() or 0)
        return Plan(
            kind=POSTGRES,
            location=self.location,
            files=1,
            bytes=size,
            notes=["the size on disk; a dump is usually smaller"],
        )

    def stream(self, out: Output) -> None:
        """Stream pg_dump's custom-format output into `out`, hashing it for the manifest."""
        argv = [
            "pg_dump",
            "--format=custom",
            "--compress=0",
            "--no-password",
            "--dbname",
            self.location,
        ]
        name = f"{self.dbname}.pgdump"
        digest = hashlib.sha256()
        update = digest.update
        write = out.write
        done = 0
        started = int(time.time())

        def consume(chunk: memoryview) -> None:
            nonlocal done
            update(chunk)
            write(chunk)
            done += len(chunk)
            out.advance(bytes_done=done, files_done=0, current=name)

        with Command(argv, what=f"the database {self.location}") as command:
            command.pump(consume, out.hooks.check)
            status = command.wait(out.hooks.check)
            if status != 0:
                raise command.failure(status)
            for line in command.iter_stderr():
                out.hooks.log(f"pg_dump: {line}")
        if done == 0:
            raise SourceError(f"pg_dump wrote nothing for {self.location}.")
        out.advance(bytes_done=done, files_done=1, current=name)
        out.add(
            Entry(
                path=name,
                type=FILE,
                size=done,
                mode=0o600,
                mtime=started,
                sha256=digest.hexdigest(),
            )
        )
