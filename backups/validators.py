"""Model-level validators that wrap the engine's plain-Python checks."""

from __future__ import annotations

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
