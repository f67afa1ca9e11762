"""Strict readers of settings from the environment.

Each raises ImproperlyConfigured naming the variable and the accepted values, so a typo in
production fails at start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    """Return the variable's value, or `default` when it is unset."""
    value = os.environ.get(name)
    return default if value is None else value.strip()


def env_bool(name: str, default: bool) -> bool:
    """Return a boolean from 1/0, true/false, yes/no, on/off."""
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use 1/0, true/false, yes/no.")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    """Return an integer, refusing anything below `minimum`."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}.")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """Return a comma-separated list, without empty items."""
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_paths(name: str, default: list[Path], *, base: Path) -> list[Path]:
    """Return a comma-separated list of folders, a relative one taken from `base`."""
    if os.environ.get(name) is None:
        return default
    return [base / item for item in env_list(name, [])]


def env_list_matching(name: str, pattern: str, what: str) -> list[str]:
    """Return a comma-separated list (empty when unset) whose every item is `what`."""
    items = env_list(name, [])
    for item in items:
        if not re.fullmatch(pattern, item):
            raise ImproperlyConfigured(f"{name} holds {item!r}, which is not {what}.")
    return items


def env_file(name: str, *, base: Path) -> Path | None:
    """Return the path of an existing file (a relative one taken from `base`), or None."""
    value = env_str(name)
    if not value:
        return None
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        raise ImproperlyConfigured(f"{name}={value!r}: there is no such file ({path}).")
    return path


def env_url(name: str, default: str) -> str:
    """Return an http(s) address without a trailing slash (empty when unset and no default)."""
    value = env_str(name, default) or ""
    if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ImproperlyConfigured(
            f"{name}={value!r} is not an http:// or https:// address such as "
            "https://backups.example.com."
        )
    return value.rstrip("/")


def env_pairs(name: str, pattern: str, what: str) -> dict[str, str]:
    """Return comma-separated KEY=VALUE pairs, each VALUE matching `pattern`."""
    pairs = {}
    for item in env_list(name, []):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not re.fullmatch(pattern, value.strip()):
            raise ImproperlyConfigured(f"{name} holds {item!r}, which is not {what}.")
        pairs[key.strip()] = value.strip()
    return pairs


def env_file_paths(name: str) -> list[Path]:
    """Return absolute file paths joined by os.pathsep (":" on Unix); empty when unset.

    Only the names are checked here: the files themselves are read when needed, so a
    host can start before a secret is mounted.
    """
    value = env_str(name) or ""
    paths = [Path(part) for part in value.split(os.pathsep) if part.strip()]
    for path in paths:
        if not path.is_absolute():
            raise ImproperlyConfigured(
                f"{name} holds {str(path)!r}, which is not an absolute path; give the full "
                f"path of each file, joined by {os.pathsep!r}."
            )
    return paths
