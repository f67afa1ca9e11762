"""Where a restore may write: local folders and files, PostgreSQL servers, pod namespaces.

The engine reads no settings: the caller says in the RestoreRequest which folders a
restore to a new location must stay inside (`roots`), which places no restore may touch
(`refused`), and which PostgreSQL servers and pod namespaces a new location may be on
besides the source's own. These checks hold a target against them; they run when a
restore is requested and again when it executes, since the filesystem may have changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import TargetError
from ..locations import parse_pod_path, postgres_conninfo

# Connection parameters a new-location PostgreSQL target may set freely. Any other one (a
# service or password file, a host address that overrides the host name, options...) must
# be as the source has it, so a target cannot steer the connection or a password elsewhere.
FREE_TARGET_PARAMS = frozenset(
    {"host", "port", "dbname", "user", "sslmode", "connect_timeout", "application_name"}
)
# Where libpq finds a password that is not keyed by host: a password from these goes only
# to the source's own server. A pgpass file (PGPASSFILE) is keyed by host and stays.
PASSWORD_ENV = ("PGPASSWORD", "PGSERVICE", "PGSERVICEFILE")
DEFAULT_PORT = "5432"


def within(path: str, folder: str) -> bool:
    """Return whether `path` is `folder` or lies below it (both absolute, resolved)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_local_place(
    target: str, *, in_place: bool, roots: Sequence[str] | None, refused: Mapping[str, str]
) -> None:
    """Refuse a local target in, at or around a refused place, or outside `roots`.

    Both are judged on the real path, every symlink resolved, so a symlink cannot lead a
    restore out of a root. `roots` bind only a restore to a new location; None means
    anywhere.
    """
    real = os.path.realpath(target)
    shown = target if real == target else f"{target} (really {real})"
    for place, what in refused.items():
        place_real = os.path.realpath(place)
        if within(real, place_real) or within(place_real, real):
            if real == place_real:
                relation = "is"
            elif within(real, place_real):
                relation = "is inside"
            else:
                relation = "contains"
            raise TargetError(
                f"The target {shown} {relation} {what} ({place_real}); a restore never "
                "writes there. Choose another target."
            )
    if in_place or roots is None:
        return
    real_roots = [os.path.realpath(root) for root in roots]
    if not any(real != root and within(real, root) for root in real_roots):
        allowed = ", ".join(real_roots) or "none are configured"
        raise TargetError(
            f"The target {shown} is outside the folders restores to a new location may "
            f"write to ({allowed}); choose a target inside one of them, or ask an "
            "administrator to restore it from the command line."
        )


def free_ancestor(path: str) -> str:
    """Return the nearest folder above `path` that exists."""
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return folder


@dataclass(frozen=True)
class PostgresTarget:
    """A PostgreSQL target as libpq will read it, and whether it is the source's server."""

    params: dict[str, str]
    servers: tuple[tuple[str, str], ...]
    own_server: bool

    @property
    def dbname(self) -> str:
        """Return the database the target names."""
        return self.params.get("dbname") or self.params.get("user") or ""


def server_name(host: str, port: str) -> str:
    """Render a server as `HOST:PORT` (`[V6]:PORT`; the default socket as `local:PORT`)."""
    if ":" in host:
        host = f"[{host}]"
    return f"{host or 'local'}:{port}"


def parse_server(entry: str) -> tuple[str, str | None]:
    """Parse an allow-list entry `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise ValueError(f"{entry!r} is not HOST, HOST:PORT or [IPV6]:PORT.")
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:
        host, port = entry, None
    if not host or (port is not None and not port.isdigit()):
        raise ValueError(f"{entry!r} is not HOST, HOST:PORT or [IPV6]:PORT.")
    return host.lower(), port


def _servers(params: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Return the (host, port) pairs libpq tries for `params`, as it fills them in."""
    hosts = (params.get("host") or os.environ.get("PGHOST", "")).split(",")
    ports = (params.get("port") or os.environ.get("PGPORT", "")).split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        raise TargetError(f"The target names {len(hosts)} hosts but {len(ports)} ports.")
    return tuple(
        (host.strip().lower(), port.strip() or DEFAULT_PORT)
        for host, port in zip(hosts, ports, strict=True)
    )


def _listed(host: str, port: str, allowed: Sequence[str]) -> bool:
    for entry in allowed:
        try:
            allowed_host, allowed_port = parse_server(entry)
        except ValueError:
            continue
        if allowed_host == host and allowed_port in (None, port):
            return True
    return False


def postgres_target(
    target: str, *, source_location: str | None, servers: Sequence[str], in_place: bool = False
) -> PostgresTarget:
    """Read a PostgreSQL target; for a new location, refuse what the source may not reach.

    In place the target is the source itself. A new location must be on the source's own
    server or on one of `servers` (entries `HOST` or `HOST:PORT`), may not be the source's
    database, and may set connection parameters beyond the plain ones only as the source
    does. Nothing connects here.
    """
    try:
        params = postgres_conninfo(target)
        source = postgres_conninfo(source_location) if source_location else {}
    except ValueError as error:
        raise TargetError(str(error)) from None
    own = _servers(source) if source_location else ()
    wanted = _servers(params)
    # In place, the target is the source's own location whatever it looks like.
    found = PostgresTarget(params, wanted, in_place or (bool(own) and set(wanted) <= set(own)))
    if in_place:
        return found
    for key, value in params.items():
        if key not in FREE_TARGET_PARAMS and source.get(key) != value:
            raise TargetError(
                f"The target sets {key}, which a restore to a new location may set only as "
                "the source does; remove it from the URI."
            )
    for host, port in wanted:
        if (host, port) not in own and not _listed(host, port, servers):
            mine = ", ".join(server_name(*server) for server in own) or "unknown"
            raise TargetError(
                f"The PostgreSQL server {server_name(host, port)} is not one a restore may "
                f"write to: only the source's own ({mine}) and those listed in "
                "RESTORE_POSTGRES_HOSTS. Nothing was sent to it."
            )
    if found.own_server and found.dbname == (source.get("dbname") or source.get("user")):
        raise TargetError(
            f"{found.dbname} is the source's own database: name a new database, or restore "
            "over the source in place."
        )
    return found


def libpq_env(target: PostgresTarget) -> dict[str, str]:
    """Return the environment for libpq tools connecting to `target`.

    A password that is not keyed by host (PGPASSWORD, a service) belongs to the source's
    server and never reaches another one; there, only a pgpass entry for that host can
    supply one.
    """
    env = dict(os.environ)
    if not target.own_server:
        for name in PASSWORD_ENV:
            env.pop(name, None)
    return env


def check_pod_namespace(
    target: str, *, source_location: str | None, namespaces: Sequence[str]
) -> None:
    """Refuse a new-location pod target outside the source's namespace and `namespaces`."""
    namespace = parse_pod_path(target).namespace
    own = None
    if source_location:
        try:
            own = parse_pod_path(source_location).namespace
        except ValueError:
            own = None
    if namespace != own and namespace not in namespaces:
        raise TargetError(
            f"The namespace {namespace} is not one a restore may write to: only the "
            f"source's own ({own or 'unknown'}) and those listed in RESTORE_POD_NAMESPACES."
        )
