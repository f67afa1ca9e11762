"""The age keys of this host: the identities (private keys) named by AGE_IDENTITY_FILE.

Recipients (public keys) live on policies; identities never reach the database. They are
read when a restore, a verification, a drill, an import or the catalog needs them, kept
for the life of the process, and read again when one of their files changes (a rotated
key takes effect without restarting the workers).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings

from backups.engine.crypto import Identity, fingerprint, load_identities

_lock = threading.Lock()
_cache: dict[str, tuple[tuple, list[Identity]]] = {}


def _stamp(paths: Sequence[Path]) -> tuple:
    """Return what changes when one of `paths` is replaced, edited or has its mode changed."""
    stamps = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as error:
            stamps.append((str(path), error.errno))
        else:
            stamps.append(
                (str(path), info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode, info.st_uid)
            )
    return tuple(stamps)


def identities_load() -> list[Identity]:
    """Return the identities in the AGE_IDENTITY_FILE files (none when it is unset).

    Raise KeyFileError (one sentence naming the file) for a file that is missing,
    unsafe or not an identity file.
    """
    paths = list(settings.AGE_IDENTITY_FILE or ())
    if not paths:
        return []
    key = os.pathsep.join(map(str, paths))
    stamp = _stamp(paths)
    with _lock:
        cached = _cache.get(key)
        if cached is not None and cached[0] == stamp:
            return list(cached[1])
        identities = load_identities(paths)
        _cache[key] = (stamp, identities)
        return list(identities)


def recipients_shown(recipients: Sequence[str]) -> str:
    """Return recipients as pages and logs show them: their fingerprints, comma-separated."""
    return ", ".join(fingerprint(recipient) for recipient in recipients)
