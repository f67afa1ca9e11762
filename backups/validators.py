"""Model-level validators that wrap the engine's plain-Python checks."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

from backups.engine.durations import parse_cron
from backups.engine.names import printable


def validate_cron(value: str) -> None:
    """Reject a schedule that is not a 5-field cron expression."""
    if not value:
        return
    try:
        parse_cron(value)
    except ValueError as error:
        raise ValidationError(str(error), code="invalid_cron") from None


def validate_excludes(value) -> None:
    """Exclude globs are a list of non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValidationError("Exclude patterns must be a list of non-empty glob strings.")
    for item in value:
        if printable(item) != item:
            raise ValidationError(
                f"The exclude pattern '{printable(item)}' is not valid UTF-8 (the \\xNN are "
                "its other bytes); match such names with a wildcard, e.g. '*.tmp'."
            )


# An apprise tag: what an APPRISE_CONFIG entry is labelled with (`tag: ops`).
TAG_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


def parse_tags(value: str | list | None) -> list[str]:
    """Return the notification tags in `value` (text "ops, dba" or a list), in order, once.

    Raise ValueError naming the first tag that is not letters, digits, `_`, `.` or `-`.
    """
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).replace(" ", ",").split(",")
    tags: list[str] = []
    for item in items:
        tag = item.strip() if isinstance(item, str) else item
        if tag == "":
            continue
        if not isinstance(tag, str) or not re.fullmatch(TAG_PATTERN, tag):
            raise ValueError(
                f"{tag!r} is not a notification tag: use letters, digits, '_', '.' or '-' "
                "(up to 64), as in APPRISE_CONFIG's `tag:` entries"
            )
        if tag not in tags:
            tags.append(tag)
    return tags


def validate_tags(value: str) -> None:
    """Reject a comma-separated tag list holding something that is no apprise tag."""
    try:
        parse_tags(value)
    except ValueError as error:
        raise ValidationError(str(error), code="invalid_tag") from None
