"""Files a partial restore extracts only because selected hardlinks point at them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..manifest import Manifest
from ..safety import Selection, clean_path
from .contents import member_key


def hardlink_helpers(manifest: Manifest, selection: Selection) -> frozenset[str]:
    """Return files outside a partial selection that selected hardlinks need as targets."""
    if selection.everything:
        return frozenset()
    helpers = set()
    for entry in manifest.entries:
        if entry.type == "hardlink" and selection.includes(member_key(entry.path)):
            target = clean_path(entry.target or "")
            if target is not None and not selection.includes(target):
                helpers.add(target)
    return frozenset(helpers)


def drop_helpers(staging: Path, selection: Selection, helpers: frozenset[str]) -> None:
    """Remove helper files (and folders tar made for them) that were not asked for."""
    for helper in sorted(helpers, key=len, reverse=True):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging / helper)
        parent = os.path.dirname(helper)
        while parent and not selection.includes(parent) and not selection.is_ancestor(parent):
            try:
                os.rmdir(staging / parent)
            except OSError:
                break
            parent = os.path.dirname(parent)
