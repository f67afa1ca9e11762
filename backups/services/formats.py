"""How sizes and durations are written for people, the same on every page and command.

One convention: sizes in IEC units (KiB, MiB, GiB: powers of 1024, as `ls -h` and `du -h`
count them), durations in their two largest units (`1h 30m`, `45s`). The functions are
the engine's, which writes its own messages with them; pages, commands and services take
them from here.
"""

from __future__ import annotations

from backups.engine.atomic import format_bytes
from backups.engine.durations import format_duration, parse_duration

__all__ = ["format_bytes", "format_duration", "parse_duration"]
