"""The child process that encrypts or decrypts a stream when the work runs in a process.

    python -m backups.engine.crypto.child encrypt RECIPIENT...     stdin -> stdout
    python -m backups.engine.crypto.child decrypt FD               stdin -> stdout

pyrage holds the GIL while it encrypts or decrypts, so in a thread it competes with
everything else the parent runs in Python (decompression, tar parsing); a child of its own
runs on another core. A decrypting child reads its identities from the pipe FD (never
argv or the environment, which other users may see). A failure is reported on stderr as
one JSON object, {"error": <exception type>, "message": <what age said>}, and exit status 1.

The child hands pyrage its stdin and stdout by path (`/dev/stdin`, the pipe itself) rather
than as Python file objects: pyrage then copies in Rust alone, instead of calling back into
Python for every 8 KiB, which measured about 12 % less CPU.
"""

from __future__ import annotations

import json
import os
import sys

import pyrage
from pyrage import x25519

STDIN, STDOUT = "/dev/stdin", "/dev/stdout"


def main(argv: list[str]) -> int:
    """Run one encryption or decryption from stdin to stdout; return the exit status."""
    try:
        if argv[0] == "encrypt":
            recipients = [x25519.Recipient.from_str(text) for text in argv[1:]]
            pyrage.encrypt_file(STDIN, STDOUT, recipients)
        elif argv[0] == "decrypt":
            with os.fdopen(int(argv[1]), "r", encoding="ascii") as keys:
                identities = [x25519.Identity.from_str(line) for line in keys.read().split()]
            pyrage.decrypt_file(STDIN, STDOUT, identities)
        else:
            raise ValueError(f"unknown operation {argv[0]!r}")
    except Exception as error:
        json.dump({"error": type(error).__name__, "message": str(error)}, sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
