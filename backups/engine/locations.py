"""Parse and validate source locations (the contract's LOC forms), without Django."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DIRECTORY, SQLITE, KUBERNETES, POSTGRES = "directory", "sqlite", "kubernetes", "postgres"
KINDS = (DIRECTORY, SQLITE, KUBERNETES, POSTGRES)
# The kinds whose location is a path on the worker host.
LOCAL_KINDS = (DIRECTORY, SQLITE)

# Kubernetes names are DNS-1123 labels (namespaces, containers) or subdomains (pods).
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_SUBDOMAIN = r"[a-z0-9](?:[-.a-z0-9]{0,251}[a-z0-9])?"
_POD_LOCATION = re.compile(
    rf"^(?P<namespace>{_LABEL})/(?P<pod>{_SUBDOMAIN})(?:/(?P<container>{_LABEL}))?:(?P<path>/.*)$"
)
_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class PodPath:
    """A path inside a Kubernetes pod."""

    namespace: str
    pod: str
    container: str | None
    path: str

    def __str__(self) -> str:
        container = f"/{self.container}" if self.container else ""
        return f"{self.namespace}/{self.pod}{container}:{self.path}"


def parse_pod_path(location: str) -> PodPath:
    """Parse `NAMESPACE/POD[/CONTAINER]:/ABS/PATH`, raising ValueError with a clear message."""
    match = _POD_LOCATION.match(location.strip())
    if not match:
        raise ValueError(
            f"{location!r} is not a pod location: use NAMESPACE/POD[/CONTAINER]:/ABS/PATH, "
            "e.g. prod/api-0/app:/var/lib/data (lower-case Kubernetes names, absolute path)"
        )
    return PodPath(**match.groupdict())


class _LibpqError(ValueError):
    """libpq refused a connection string; the message is libpq's."""


def _conninfo_to_dict(conninfo: str) -> dict:
    """Read a connection string as libpq does; raise _LibpqError when libpq refuses it.

    psycopg is imported here, not at the top: loading libpq costs every command that
    never meets a PostgreSQL location about 50 ms of start-up.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(conninfo)
    except psycopg.Error as error:
        raise _LibpqError(str(error)) from None


def check_postgres_uri(location: str) -> str:
    """Validate a libpq URI without a password; return the database name.

    The URI is read by libpq itself (through psycopg), as pg_dump will read it: a password
    spelled `?pass%77ord=` or hidden in a `dbname` that is itself a connection string is
    found as surely as `user:secret@host`.
    """
    parts = urlsplit(location)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(
            f"{location!r} is not a PostgreSQL URI: use postgresql://USER@HOST:PORT/DBNAME"
        )
    try:
        options = _conninfo_to_dict(location)
    except _LibpqError as error:
        reason = str(error).strip().rstrip(".")
        # Not echoed: a URI that libpq cannot read may still hold a password.
        raise ValueError(
            f"The PostgreSQL URI cannot be read ({reason}): use postgresql://USER@HOST:PORT/DBNAME"
        ) from None
    nested = options.get("dbname", "")
    if parts.password is not None or "password" in options or _has_password(nested):
        raise ValueError(
            "The PostgreSQL URI contains a password; remove it and provide the password "
            "through PGPASSWORD or a pgpass file on the worker hosts, never in the dashboard."
        )
    dbname = parts.path.lstrip("/")
    if not dbname:
        raise ValueError(f"{location!r} names no database: add /DBNAME at the end.")
    return dbname


def postgres_conninfo(location: str) -> dict[str, str]:
    """Return the connection parameters libpq reads from `location` (query string included).

    Raise ValueError naming the problem when libpq cannot parse it.
    """
    try:
        params = _conninfo_to_dict(location.strip())
    except _LibpqError as error:
        raise ValueError(f"{location!r} is not a libpq URI libpq can read: {error}") from None
    return {key: str(value) for key, value in params.items() if value is not None}


def _has_password(dbname: str) -> bool:
    """Whether a database name that is itself a connection string carries a password."""
    if "=" not in dbname and not dbname.startswith(("postgresql:", "postgres:")):
        return False
    try:
        options = _conninfo_to_dict(dbname)
    except _LibpqError:
        return False
    return "password" in options or urlsplit(dbname).password is not None


def check_location(kind: str, location: str, *, must_exist: bool = True) -> None:
    """Validate `location` for a source of `kind`; raise ValueError naming the problem."""
    if kind not in KINDS:
        raise ValueError(f"Unknown source kind {kind!r}: use one of {', '.join(KINDS)}.")
    if not location or not location.strip():
        raise ValueError("The location is empty.")
    if kind == KUBERNETES:
        parse_pod_path(location)
    elif kind == POSTGRES:
        check_postgres_uri(location)
    else:
        _check_local_path(kind, location, must_exist)


def _check_local_path(kind: str, location: str, must_exist: bool) -> None:
    if not os.path.isabs(location):
        raise ValueError(f"{location!r} is a relative path: give the absolute path.")
    if not must_exist:
        return
    if kind == DIRECTORY:
        if not os.path.exists(location):
            raise ValueError(f"The directory {location} does not exist.")
        if not os.path.isdir(location):
            raise ValueError(f"{location} is not a directory.")
        if not os.access(location, os.R_OK | os.X_OK):
            raise ValueError(f"The directory {location} is not readable by this user.")
    elif kind == SQLITE:
        if not os.path.exists(location):
            raise ValueError(f"The database file {location} does not exist.")
        if not os.path.isfile(location):
            raise ValueError(f"{location} is not a file.")
        try:
            with open(location, "rb") as handle:
                magic = handle.read(len(_SQLITE_MAGIC))
        except OSError as error:
            raise ValueError(f"The database file {location} cannot be read: {error}") from None
        if magic and magic != _SQLITE_MAGIC:
            raise ValueError(f"{location} is not a SQLite database file.")
