"""Turn what age says about a file it could not decrypt into one sentence a user can act on.

age (rage, through pyrage) reports little: "No matching keys found", "Header MAC is
invalid", "decryption error", "age file is truncated". What the decryption saw (the first
bytes, how many stored bytes it read and whether it reached the end, how much plaintext
came out) says the rest: whether the file is not age at all, ends early, or was altered,
and at which stored byte the 64 KiB block that failed begins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import (
    AlteredArchiveError,
    ArchiveError,
    NoMatchingIdentityError,
    NotEncryptedError,
    TruncatedArchiveError,
)
from .keys import Identity, fingerprint, matching, no_identity_message

MAGIC = b"age-encryption.org/v1\n"
ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
# age's payload: a 16-byte nonce, then STREAM chunks of 64 KiB of plaintext, each with a
# 16-byte Poly1305 tag; the last chunk may be shorter.
NONCE = 16
PLAIN_CHUNK = 64 << 10
STORED_CHUNK = PLAIN_CHUNK + 16
# Enough for any header of X25519 stanzas (each about 100 bytes).
PREFIX = 64 << 10

_NO_KEY = "No matching keys found"
_HEADER_DAMAGE = ("Header is invalid", "Header MAC is invalid", "Unknown age format")
_PAYLOAD_TRUNCATED = "age file is truncated"
_SHORT_READ = "failed to fill whole buffer"


@dataclass
class Seen:
    """What a decryption read and produced, for the message when it fails."""

    prefix: bytearray = field(default_factory=bytearray)
    stored: int = 0
    at_end: bool = False
    plain: int = 0

    def read(self, data) -> None:
        """Account for stored bytes read (b"" is the end of the file)."""
        if not data:
            self.at_end = True
            return
        if len(self.prefix) < PREFIX:
            self.prefix += data[: PREFIX - len(self.prefix)]
        self.stored += len(data)


@dataclass
class Subject:
    """The file being decrypted, as messages name it, and what is known about it."""

    what: str
    recipients: Sequence[str] = ()
    identities: Sequence[Identity] = ()
    size: int | None = None


def header_length(prefix: bytes) -> int | None:
    """Return the length of the age header at the start of `prefix`, None if not all there."""
    mac = prefix.find(b"\n--- ")
    if mac < 0:
        return None
    end = prefix.find(b"\n", mac + 1)
    return None if end < 0 else end + 1


def failure(message: str, seen: Seen, subject: Subject) -> ArchiveError:
    """Return the error for a decryption that failed with age's `message`."""
    what = subject.what
    if message.startswith(_NO_KEY):
        return _no_key(seen, subject)
    prefix = bytes(seen.prefix)
    if not prefix.startswith((MAGIC, ARMOR)):
        if seen.at_end and (MAGIC.startswith(prefix) or ARMOR.startswith(prefix)):
            return TruncatedArchiveError(
                f"{what} is truncated: it ends ({seen.stored} bytes) before its age header does."
            )
        return NotEncryptedError(
            f"{what} is not age-encrypted: it does not start with an age header. Was it "
            "written without encryption, or replaced?"
        )
    if prefix.startswith(ARMOR):
        return ArchiveError(f"{what} cannot be decrypted: {message}.")
    header = header_length(prefix)
    if header is None or seen.stored < header + NONCE:
        if seen.at_end:
            return TruncatedArchiveError(
                f"{what} is truncated: it ends ({seen.stored} bytes) within its age header."
            )
        return AlteredArchiveError(f"{what} was altered: its age header is damaged ({message}).")
    if message.startswith(_HEADER_DAMAGE):
        return AlteredArchiveError(f"{what} was altered: its age header is damaged ({message}).")
    block = -(-seen.plain // PLAIN_CHUNK)
    offset = header + NONCE + block * STORED_CHUNK
    if subject.size is not None:
        if seen.at_end and seen.stored < subject.size:
            return _truncated(what, seen.stored, subject.size)
        return _altered(what, offset)
    if message.startswith((_PAYLOAD_TRUNCATED, _SHORT_READ)):
        return _truncated(what, seen.stored, None)
    if seen.at_end and offset + STORED_CHUNK >= seen.stored:
        return TruncatedArchiveError(
            f"{what} is truncated, or its end was altered: the last block of its encrypted "
            f"stream (at byte {offset}) fails age authentication."
        )
    return _altered(what, offset)


def _no_key(seen: Seen, subject: Subject) -> ArchiveError:
    usable = matching(subject.identities, subject.recipients)
    if usable:
        # The key of a recorded recipient is at hand, yet age found no stanza it opens.
        return AlteredArchiveError(
            f"{subject.what} was altered: its age header no longer opens with the key of "
            f"{fingerprint(usable[0].recipient)} ({usable[0].path}), one of the recipients "
            "recorded when it was written."
        )
    return NoMatchingIdentityError(
        no_identity_message(subject.what, subject.recipients, subject.identities)
    )


def _truncated(what: str, stored: int, size: int | None) -> TruncatedArchiveError:
    expected = f", of the {size} written" if size is not None else ""
    return TruncatedArchiveError(
        f"{what} is truncated: its encrypted stream ends early (after {stored} bytes{expected})."
    )


def _altered(what: str, offset: int) -> AlteredArchiveError:
    return AlteredArchiveError(
        f"{what} was altered: age authentication failed at byte {offset} (the 64 KiB block "
        "that starts there)."
    )
