"""Workflows over the catalog: creating policies and sources with full validation."""

from __future__ import annotations

import os
from pathlib import Path

from django.db import transaction
from django.utils.text import slugify

from backups.engine.crypto import load_recipients_file, parse_recipients
from backups.engine.errors import KeyFileError
from backups.models import Policy, Source
from backups.services.schedules import schedule_sync


class RecipientsRefused(ValueError):
    """An `--encrypt-to` value is not an age recipient nor a file of them; says which."""


def recipients_from_options(values: list[str]) -> list[str]:
    """Return the age recipients named by `--encrypt-to` values, each checked, without repeats.

    A value that is an existing file is read as a recipients file (one a line, `#`
    comments); any other is a recipient itself. Raise RecipientsRefused naming the bad one.
    """
    try:
        return _recipients(values)
    except KeyFileError as error:
        raise RecipientsRefused(str(error)) from None


def _recipients(values: list[str]) -> list[str]:
    recipients: list[str] = []
    for number, value in enumerate(values, start=1):
        text = value.strip()
        if text and not text.startswith("age1") and os.path.isfile(text):
            found = load_recipients_file(Path(text))
        elif not text or text.startswith("#"):
            raise KeyFileError(
                f"Recipient {number} is empty: give an age public key (age1…) or a file of them."
            )
        else:
            # Blank lines before it are skipped but counted: the message names it by number.
            found = parse_recipients([""] * (number - 1) + [text])
        recipients.extend(found)
    return list(dict.fromkeys(recipients))


@transaction.atomic
def policy_create(*, name: str, copy_to=(), **fields) -> Policy:
    """Create a policy after validating every field; raise ValidationError otherwise.

    `copy_to` are the storages each backup is copied to, none of them the one it is
    written to.
    """
    policy = Policy(name=name, **fields)
    policy.full_clean()
    Policy.check_copy_to(policy.storage_id, [storage.pk for storage in copy_to])
    policy.save()
    policy.copy_to.set(copy_to)
    return policy


@transaction.atomic
def source_create(
    *,
    name: str,
    kind: str,
    location: str,
    policy: Policy | None = None,
    excludes: list[str] | None = None,
    **fields,
) -> Source:
    """Create a source after validating its kind and location; raise ValidationError."""
    source = Source(
        name=name,
        slug=slugify(name)[:100],
        kind=kind,
        location=location,
        policy=policy,
        excludes=list(excludes or []),
        **fields,
    )
    source.full_clean()
    source.save()
    # Explicitly here, not in a signal: the schedule is part of creating a source.
    schedule_sync(source)
    return source


def source_to_dict(source: Source) -> dict:
    """Return the JSON object describing a source."""
    return {
        "name": source.name,
        "slug": source.slug,
        "kind": source.kind,
        "location": source.location,
        "policy": source.policy.name if source.policy_id else None,
        "excludes": source.excludes,
        "enabled": source.enabled,
        "owner": source.owner,
        "notify": source.notify.split(",") if source.notify else [],
    }
