"""`policy add NAME …`: create a backup policy from the command line."""

from __future__ import annotations

import argparse

from backups.audit import audit_record, field_changes, field_values
from backups.cli import CliCommand, usage_error
from backups.models import DEFAULT_RUN_TIMEOUT_S, KEEP_RULES, Compression, Policy
from backups.services.catalog import RecipientsRefused, policy_create, recipients_from_options
from backups.services.formats import parse_duration
from backups.services.storages import StorageRefused, storage_named


def duration(text: str) -> int:
    """An argparse type for `90s`, `15m`, `6h`, `7d`."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def count(text: str) -> int:
    """An argparse type for a count that cannot be negative."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{number} is negative: a keep count is 0 or more")
    return number


class Command(CliCommand):
    help = "Manage backup policies."

    def add_arguments(self, parser):
        actions = self.subcommands(parser)
        add = actions.add_parser("add", help="Create a policy.")
        add.add_argument("name")
        add.add_argument("--schedule", default="", help="cron expression, e.g. '0 * * * *'")
        add.add_argument("--rpo", type=duration, help="recovery point objective, e.g. 6h")
        add.add_argument("--rto", type=duration, help="recovery time objective, e.g. 1h")
        add.add_argument("--compression", choices=Compression.values, default=Compression.ZSTD)
        add.add_argument("--level", type=int, help="compression level")
        for rule in KEEP_RULES:
            add.add_argument(f"--keep-{rule}", type=count, default=0, metavar="N")
        add.add_argument("--drill-every", type=duration, help="restore drill interval, e.g. 7d")
        add.add_argument(
            "--full-every",
            type=duration,
            help="a scheduled backup is a full one this often, e.g. 7d; the others are "
            "incremental (directory sources)",
        )
        add.add_argument(
            "--differential-every",
            type=duration,
            help="between fulls, a scheduled backup is a differential this often, e.g. 1d",
        )
        add.add_argument("--run-timeout", type=duration, default=DEFAULT_RUN_TIMEOUT_S)
        add.add_argument(
            "--no-verify", action="store_true", help="do not verify after every backup"
        )
        add.add_argument(
            "--notify",
            action="append",
            default=[],
            metavar="TAG",
            help="tag of the APPRISE_CONFIG targets its sources' alerts go to (repeatable)",
        )
        add.add_argument(
            "--storage", metavar="NAME", help="where backups are written (default: ARCHIVE_ROOT)"
        )
        add.add_argument(
            "--copy-to",
            metavar="NAME",
            action="append",
            default=[],
            help="copy each backup to this storage too (repeatable)",
        )
        add.add_argument(
            "--archive-to", metavar="NAME", help="move old restore points to this storage"
        )
        add.add_argument("--archive-after", type=duration, metavar="DUR", help="how old, e.g. 30d")
        add.add_argument(
            "--encrypt-to",
            action="append",
            default=[],
            metavar="RECIPIENT",
            help="age public key (age1…) to encrypt backups to, or a file of them; repeatable",
        )
        add.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        name = options["name"]
        if Policy.objects.filter(name=name).exists():
            raise usage_error(f"A policy named {name!r} already exists.")
        try:
            storage = storage_named(options["storage"])
            copy_to = [storage_named(name) for name in options["copy_to"]]
            archive_to = storage_named(options["archive_to"])
        except StorageRefused as refused:
            raise usage_error(str(refused)) from None
        if options["archive_to"] and archive_to is None:
            raise usage_error("--archive-to names a storage added with `storage add`.")
        if None in copy_to:
            raise usage_error(
                "--copy-to names a storage added with `storage add`, not the default ARCHIVE_ROOT."
            )
        try:
            recipients = recipients_from_options(options["encrypt_to"])
        except RecipientsRefused as error:
            raise usage_error(str(error)) from None
        policy = policy_create(
            name=name,
            schedule=options["schedule"],
            rpo_s=options["rpo"],
            rto_s=options["rto"],
            compression=options["compression"],
            compression_level=options["level"],
            drill_every_s=options["drill_every"],
            full_every_s=options["full_every"],
            differential_every_s=options["differential_every"],
            run_timeout_s=options["run_timeout"],
            verify_after_backup=not options["no_verify"],
            notify=",".join(options["notify"]),
            storage=storage,
            copy_to=copy_to,
            archive_to=archive_to,
            archive_after_s=options["archive_after"],
            recipients="\n".join(recipients),
            **{f"keep_{rule}": options[f"keep_{rule}"] for rule in KEEP_RULES},
        )
        # As the admin does for its changes: who created it, with every value it started with.
        audit_record(
            actor=None,
            action="policy.create",
            outcome="succeeded",
            obj=policy,
            detail={"changes": field_changes(None, field_values(policy))},
        )
        if options["json"]:
            self.print_json({"name": policy.name, "id": policy.pk})
        else:
            self.stdout.write(f"Created policy {policy.name!r}.")
