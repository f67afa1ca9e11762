"""The child process that encrypts or decrypts a stream when the work runs in a process.

    python -m backups.engine.crypto.child encrypt RECIPIENT...     stdin -> stdout
    python -m backups.engine.crypto.child decrypt FD               stdin -> stdout

pyrage holds the GIL while it encrypts or decrypts, so in a thread it competes with
everything else the parent runs in Python (decompression, tar parsing); a child of its own
runs on another core. A decrypting child reads its identities from the pipe FD (never
argv or the environment, which other users may see). A failure is reported on stderr as
one JSON object, {"error": <exception type>, "message": <what age said>}, and exit status 1.

The child's stdin and stdout are buffered by 1 MiB: pyrage reads and writes 8 KiB at a
time, and the parent, which copies the other end of each pipe, then wakes once per MiB
rather than once per 8 KiB (its share of the work is the one on the critical path).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

import pyrage
from pyrage import x25519

PIECE = 1 << 20


def main(argv: list[str]) -> int:
    """Run one encryption or decryption from stdin to stdout; return the exit status."""
    source = io.BufferedReader(io.FileIO(0, "rb", closefd=False), PIECE)
    sink = io.BufferedWriter(io.FileIO(1, "wb", closefd=False), PIECE)
    try:
        if argv[0] == "encrypt":
            recipients = [x25519.Recipient.from_str(text) for text in argv[1:]]
            pyrage.encrypt_io(source, sink, recipients)
        elif argv[0] == "decrypt":
            with os.fdopen(int(argv[1]), "r", encoding="ascii") as keys:
                identities = [x25519.Identity.from_str(line) for line in keys.read().split()]
            pyrage.decrypt_io(source, sink, identities)
        else:
            raise ValueError(f"unknown operation {argv[0]!r}")
    except Exception as error:
        with contextlib.suppress(OSError):
            sink.flush()
        json.dump({"error": type(error).__name__, "message": str(error)}, sys.stderr)
        return 1
    sink.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
