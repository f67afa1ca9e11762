"""A duration stored as whole seconds and edited as text like "15m" or "7d"."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.db import models

from backups.engine.durations import UNITS, parse_duration


def exact_duration(seconds: int) -> str:
    """Return `seconds` in the largest single unit that divides it: 3600 -> "1h"."""
    for unit, size in sorted(UNITS.items(), key=lambda item: -item[1]):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class DurationTextField(forms.CharField):
    """A form field accepting `90s`, `15m`, `6h`, `7d`, `2w`."""

    def prepare_value(self, value):
        if isinstance(value, int):
            return exact_duration(value)
        return value

    def to_python(self, value):
        value = super().to_python(value)
        if value in self.empty_values:
            return None
        if isinstance(value, int):
            return value
        try:
            return parse_duration(value)
        except ValueError as error:
            raise ValidationError(str(error), code="invalid") from None


class SecondsField(models.PositiveIntegerField):
    """Whole seconds in the database, a duration like "6h" in forms and the admin."""

    def formfield(self, **kwargs):
        defaults = {
            "form_class": DurationTextField,
            "help_text": self.help_text or "A number with a unit: 90s, 15m, 6h, 7d.",
        }
        defaults.update(kwargs)
        # PositiveIntegerField would force an IntegerField; a CharField parses units.
        defaults.pop("min_value", None)
        defaults.pop("max_value", None)
        return models.Field.formfield(self, **defaults)
