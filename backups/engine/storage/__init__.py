"""Storages: where archives live, a local folder or an S3 bucket, behind one interface.

    storage = open_storage("s3", bucket="backups", prefix="site-a",
                           endpoint_url="https://s3.example.com", credentials_env="BACKUP_S3")
    with storage.open_write("db/20260101T000000Z-7.tar.zst") as upload:
        for chunk in chunks:
            upload.write(chunk)
        upload.finish()       # every byte durable, nothing visible yet
        storage.put_atomic("db/20260101T000000Z-7.tar.zst.sha256", sidecar)
        upload.publish()      # the archive appears whole, or not at all
    with storage.open_read("db/20260101T000000Z-7.tar.zst") as stream:
        stream.readinto(buffer)

The layout inside every storage is the archive folder's: `<source-slug>/<stamp>-<run id>`
`.tar.zst` with its `.sha256` and `.manifest.json` beside it, so any S3 client,
`sha256sum -c`, `zstd` and `tar` restore without this project. See `base.Storage` for
every operation; each raises StorageError with one sentence a person can act on.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ..errors import MissingObjectError, StorageError
from .base import Entry, Pending, Storage, Upload, check_key
from .local import LocalStorage
from .stored import StoredFile, stored_file

if TYPE_CHECKING:
    from .s3 import S3Storage

__all__ = [
    "KINDS",
    "Entry",
    "LocalStorage",
    "MissingObjectError",
    "Pending",
    "S3Storage",
    "Storage",
    "StorageError",
    "StoredFile",
    "Upload",
    "check_key",
    "open_storage",
    "stored_file",
]

KINDS = ("local", "s3")


def __getattr__(name: str):
    # boto3 takes a while to import and a few dozen MB: only S3 storages pay for it.
    if name == "S3Storage":
        from .s3 import S3Storage

        return S3Storage
    raise AttributeError(name)


def open_storage(kind: str, **config: Any) -> Storage:
    """Open a storage of `kind` ("local" or "s3") from its settings.

    `local` takes `root` (a folder); `s3` takes `bucket`, and optionally `prefix`,
    `endpoint_url`, `region`, `credentials_env`, `part_size` and `upload_threads`.
    Credentials are read from the environment now and never kept in the settings.
    Raise StorageError naming an unknown kind, an unknown or missing setting, or a bad value.
    """
    if kind == "local":
        cls = LocalStorage
    elif kind == "s3":
        from .s3 import S3Storage

        cls = S3Storage
    else:
        raise StorageError(f"Unknown storage kind {kind!r}: use one of {', '.join(KINDS)}.")
    parameters = inspect.signature(cls.__init__).parameters
    known = [name for name in parameters if name != "self"]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise StorageError(
            f"A {kind} storage has no setting {unknown[0]!r}: use {', '.join(known)}."
        )
    required = [
        name
        for name, parameter in parameters.items()
        if name != "self" and parameter.default is inspect.Parameter.empty
    ]
    missing = [name for name in required if config.get(name) in (None, "")]
    if missing:
        raise StorageError(f"A {kind} storage needs a {missing[0]}.")
    return cls(**config)
