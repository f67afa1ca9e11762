"""Encryption at rest with age: archives and manifests readable only with a private key.

A policy names age recipients (X25519 public keys, `age1…`); a backup compresses, then
encrypts, then hashes, so the `.sha256` sidecar is the hash of the encrypted file and
anyone can check integrity without the key. Restoring needs an identity (private key)
file on the worker (AGE_IDENTITY_FILE). The format is standard age: `age -d -i KEY`
decrypts any archive this writes, without this project.

    recipients = parse_recipients(policy_text)          # public, may live in the database
    with EncryptingWriter(hashed_file, recipients, mode=stream_mode(last_size)) as encrypted:
        stream = compressor("zstd", encrypted)          # compress into it, then close both
    identities = load_identities(identity_file)         # AGE_IDENTITY_FILE, from settings
    plain = DecryptingReader(hashing_reader, identities, what="The archive X",
                             recipients=recorded, size=recorded_size)
    decompressor("zstd", plain)

Small objects (manifests): `encrypt_bytes`, `decrypt_bytes`.
"""

from .keys import (
    Identity,
    check_identities,
    fingerprint,
    identity_paths,
    load_identities,
    load_recipients_file,
    parse_recipients,
)
from .stream import (
    MODES,
    PROCESS,
    THREAD,
    DecryptingReader,
    EncryptingWriter,
    decrypt_bytes,
    encrypt_bytes,
    stream_mode,
)

SUFFIX = ".age"

__all__ = [
    "MODES",
    "PROCESS",
    "SUFFIX",
    "THREAD",
    "DecryptingReader",
    "EncryptingWriter",
    "Identity",
    "check_identities",
    "decrypt_bytes",
    "encrypt_bytes",
    "fingerprint",
    "identity_paths",
    "load_identities",
    "load_recipients_file",
    "parse_recipients",
    "stream_mode",
]
