"""age recipients (public keys) and identities (private keys): parse, load, check, show.

Recipients are public: a policy may keep them in the database and a manifest records them.
Identities are secret: they are read from files named by the workers' environment, kept in
memory only, and never shown; a message names the file and line, never the key.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyrage import IdentityError, RecipientError, x25519

from ..errors import KeyFileError, NoMatchingIdentityError

RECIPIENT_PREFIX = "age1"
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
# Key files hold a few lines; anything much bigger is the wrong file.
_MAX_KEY_FILE = 1 << 20


@dataclass(frozen=True)
class Identity:
    """An X25519 identity (private key), the file it came from and its public recipient."""

    key: x25519.Identity = field(repr=False, compare=False)
    recipient: str
    path: str


def fingerprint(recipient: str) -> str:
    """Return the short form of a recipient that messages show, e.g. "age1q9f3ka…s8x2m4".

    A recipient is public, so its own text is its identifier; the short form keeps
    sentences readable while staying unique enough to pick the right key file.
    """
    text = str(recipient)
    return text if len(text) <= 20 else f"{text[:10]}…{text[-6:]}"


def parse_recipients(lines: str | Iterable[str], *, origin: str = "") -> list[str]:
    """Return the age X25519 recipients in `lines`, checked, canonical and without repeats.

    `lines` is the text of a recipients file or the values of a command-line option: one
    recipient a line, blank lines and `#` comments ignored. `origin` names where the lines
    come from ("/etc/backup/recipients.txt") for the message about a bad line. Raise
    KeyFileError naming the first bad line; a private key given by mistake is not echoed.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    recipients: list[str] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"Line {number} of {origin}" if origin else f"Recipient {number}"
        recipient = _recipient(text, where)
        if recipient not in recipients:
            recipients.append(recipient)
    return recipients


def _recipient(text: str, where: str) -> str:
    if text.upper().startswith(IDENTITY_PREFIX):
        raise KeyFileError(
            f"{where} is a private key (AGE-SECRET-KEY-1…), not a recipient: give its public "
            "key instead (`age-keygen -y KEYFILE` prints it); hosts that only back up never "
            "need the private key."
        )
    if text.startswith(("ssh-", "ecdsa-", "sk-")):
        raise KeyFileError(
            f"{where} is an ssh key ({text.split()[0]}); only age X25519 recipients (age1…, "
            "made with age-keygen) are supported."
        )
    try:
        return str(x25519.Recipient.from_str(text))
    except RecipientError as error:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise KeyFileError(
            f"{where} is not an age X25519 recipient ({error}): {shown!r}; give a public key "
            "of the form age1… as printed by age-keygen."
        ) from None


def load_recipients_file(path: str | Path) -> list[str]:
    """Return the recipients listed in a file (one a line, `#` comments); refuse an empty one."""
    text = _read_key_file(Path(path), "recipients")
    recipients = parse_recipients(text.splitlines(), origin=str(path))
    if not recipients:
        raise KeyFileError(f"The recipients file {path} lists no recipient (age1… lines).")
    return recipients


def identity_paths(value: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """Return the identity files named by AGE_IDENTITY_FILE: one path, or several joined by
    os.pathsep (":" on Unix); empty parts are ignored."""
    if not value:
        return []
    if isinstance(value, os.PathLike):
        return [Path(value)]
    parts = value.split(os.pathsep) if isinstance(value, str) else value
    return [Path(part) for part in parts if str(part)]


def load_identities(paths: str | Path | Sequence[str | Path] | None) -> list[Identity]:
    """Read the age identities (AGE-SECRET-KEY-1… lines, `#` comments) from `paths`.

    `paths` is a list of files or an AGE_IDENTITY_FILE value (see identity_paths). A file
    that is missing, unreadable, readable or writable by other users, or holds a line that
    is not an identity is refused with one sentence (KeyFileError) naming the file and,
    for a bad line, its number only: the file is secret.
    """
    identities: list[Identity] = []
    seen: set[str] = set()
    for path in identity_paths(paths):
        _check_private(path)
        found = 0
        for number, line in enumerate(_read_key_file(path, "identity").splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if not text.upper().startswith(IDENTITY_PREFIX):
                raise KeyFileError(
                    f"Line {number} of the identity file {path} is not an age identity: the "
                    "file must hold AGE-SECRET-KEY-1… lines (as age-keygen writes them) and "
                    "# comments; ssh and plugin identities are not supported."
                )
            try:
                key = x25519.Identity.from_str(text)
            except IdentityError:
                raise KeyFileError(
                    f"Line {number} of the identity file {path} is not a valid age identity "
                    "(a damaged AGE-SECRET-KEY-1… line); generate keys with age-keygen."
                ) from None
            found += 1
            recipient = str(key.to_public())
            if recipient not in seen:
                seen.add(recipient)
                identities.append(Identity(key=key, recipient=recipient, path=str(path)))
        if not found:
            raise KeyFileError(
                f"The identity file {path} holds no identity (an AGE-SECRET-KEY-1… line)."
            )
    return identities


def _check_private(path: Path) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(
            f"The identity file {path} does not exist; check AGE_IDENTITY_FILE on this host."
        ) from None
    except OSError as error:
        raise KeyFileError(f"The identity file {path} cannot be read: {error.strerror}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"The identity file {path} is not a regular file.")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"The identity file {path} is open to other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); a private key must be readable by its owner "
            f"only: run `chmod 600 {path}` (on Kubernetes, mount the secret with "
            "defaultMode 0400)."
        )


def _read_key_file(path: Path, what: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"The {what} file {path} does not exist.") from None
    except OSError as error:
        raise KeyFileError(f"The {what} file {path} cannot be read: {error.strerror}.") from None
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"The {what} file {path} is larger than 1 MiB: not a key file.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"The {what} file {path} is not text: not a key file.") from None


def identity_files(identities: Sequence[Identity]) -> list[str]:
    """Return the files the identities came from, each once, in order."""
    return list(dict.fromkeys(identity.path for identity in identities))


def matching(identities: Sequence[Identity], recipients: Sequence[str]) -> list[Identity]:
    """Return the identities whose public key is one of `recipients`."""
    wanted = set(recipients)
    return [identity for identity in identities if identity.recipient in wanted]


def no_identity_message(
    what: str, recipients: Sequence[str], identities: Sequence[Identity]
) -> str:
    """Return the sentence for an encrypted file none of `identities` can open."""
    if recipients:
        needed = f"is encrypted to {', '.join(fingerprint(r) for r in recipients)}"
    else:
        needed = "is encrypted to recipients that were not recorded"
    if not identities:
        return (
            f"{what} {needed}; opening it needs the identity (private key) of one of them: "
            "set AGE_IDENTITY_FILE on this host to the file that holds it."
        )
    files = ", ".join(identity_files(identities))
    return (
        f"{what} {needed}; none of the identities in {files} can open it. Set "
        "AGE_IDENTITY_FILE to a file holding the private key of one of those recipients."
    )


def check_identities(what: str, recipients: Sequence[str], identities: Sequence[Identity]) -> None:
    """Raise NoMatchingIdentityError unless one of `identities` opens a file for `recipients`.

    `what` names the file in the sentence ("The archive 2026….tar.zst.age"). Cheap (no file
    is read): a restore calls it first, so a missing key fails before anything is touched.
    Without recorded recipients only the absence of any identity can be told here.
    """
    if not identities or (recipients and not matching(identities, recipients)):
        raise NoMatchingIdentityError(no_identity_message(what, recipients, identities))
