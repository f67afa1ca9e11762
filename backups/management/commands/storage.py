"""`storage add|list|check|retention`: where archives are written and copies kept."""

from __future__ import annotations

from backups.audit import audit_record, field_changes, field_values
from backups.cli import CliCommand, failed_error, usage_error
from backups.management.commands.policy import count
from backups.models import KEEP_RULES, Storage
from backups.services.formats import format_bytes
from backups.services.storages import (
    StorageRefused,
    storage_check,
    storage_create,
    storage_named,
    storage_only_copies,
    storage_rows,
    storage_set_retention,
)


def keep_arguments(parser) -> None:
    """Add `--keep-last N` ... `--keep-yearly N`: the storage's own rules for its copies."""
    for rule in KEEP_RULES:
        parser.add_argument(
            f"--keep-{rule}", type=count, default=0, metavar="N", help=f"copies: keep {rule} N"
        )


def keep_of(options) -> dict[str, int]:
    """Return the rules given on the command line, by rule name."""
    return {rule: options[f"keep_{rule}"] for rule in KEEP_RULES}


def describe_keep(keep: dict[str, int] | None) -> str:
    """Return `monthly 12, daily 7`, or `-` for a storage whose copies follow their backups."""
    if not keep:
        return "-"
    return ", ".join(f"{rule} {number}" for rule, number in keep.items() if number)


class Command(CliCommand):
    help = "Manage the storages archives are written to."

    def add_arguments(self, parser):
        actions = self.subcommands(parser)
        add = actions.add_parser("add", help="Name a local folder or an S3 bucket.")
        add.add_argument("name")
        add.add_argument("--kind", choices=Storage.Kind.values, required=True)
        add.add_argument("--path", default="", help="local: an absolute folder")
        add.add_argument("--url", default="", help="s3: s3://BUCKET[/PREFIX]")
        add.add_argument("--endpoint", default="", help="s3: the service's URL (not AWS)")
        add.add_argument("--region", default="")
        add.add_argument(
            "--credentials-env",
            default="",
            metavar="PREFIX",
            help="read PREFIX_ACCESS_KEY_ID and PREFIX_SECRET_ACCESS_KEY from the "
            "workers' environment (default: the standard AWS variables)",
        )
        keep_arguments(add)
        add.add_argument("--json", action="store_true")
        retention = actions.add_parser(
            "retention",
            help="Set the keep rules of the copies a storage holds (--clear: copies follow "
            "their backups again).",
        )
        retention.add_argument("name")
        keep_arguments(retention)
        retention.add_argument("--clear", action="store_true", help="drop the storage's rules")
        listing = actions.add_parser("list", help="List storages with their archives.")
        listing.add_argument("--json", action="store_true")
        check = actions.add_parser("check", help="Write, read back and delete a probe object.")
        check.add_argument("name")

    def handle(self, *args, **options):
        getattr(self, options["action"])(options)

    def add(self, options):
        try:
            storage = storage_create(
                name=options["name"],
                kind=options["kind"],
                path=options["path"],
                url=options["url"],
                endpoint=options["endpoint"],
                region=options["region"],
                credentials_env=options["credentials_env"],
                keep=keep_of(options),
            )
        except StorageRefused as refused:
            raise usage_error(str(refused)) from None
        audit_record(
            actor=None,
            action="storage.create",
            outcome="succeeded",
            obj=storage,
            detail={"changes": field_changes(None, field_values(storage))},
        )
        if options["json"]:
            self.print_json({"name": storage.name, "kind": storage.kind, "id": storage.pk})
        else:
            self.stdout.write(f"Created storage {storage.name!r} ({storage.location}).")

    def retention(self, options):
        keep = keep_of(options)
        if options["clear"] == any(keep.values()):
            raise usage_error(
                "Give the rules (--keep-monthly 12 ...) or --clear to drop them, not both."
            )
        try:
            storage, changes = storage_set_retention(name=options["name"], keep=keep)
        except StorageRefused as refused:
            raise usage_error(str(refused)) from None
        # The rules decide which copies prune deletes: a change is recorded as any other.
        audit_record(
            actor=None,
            action="storage.retention",
            outcome="succeeded",
            obj=storage,
            detail={"changes": changes},
        )
        if storage.has_keep_rules:
            self.stdout.write(
                f"Storage {storage.name!r} keeps its copies by its own rules: "
                f"{describe_keep(storage.keep_rules)}."
            )
        else:
            self.stdout.write(
                f"Storage {storage.name!r} has no rules of its own: its copies go with "
                "their backups."
            )
            only = storage_only_copies(storage)
            if only:
                self.stderr.write(
                    f"warning: {only} backup(s) kept only as copies there leave at the next "
                    "prune, unless you set rules again before it."
                )

    def list(self, options):
        rows = storage_rows()
        if options["json"]:
            self.print_json({"storages": [row.to_dict() for row in rows]})
            return
        table = [("NAME", "KIND", "ARCHIVES", "SIZE", "LAST CHECK", "KEEP", "LOCATION")] + [
            (
                row.name,
                row.kind,
                str(row.archives),
                format_bytes(row.bytes),
                "-"
                if row.checked_at is None
                else f"{row.checked_at:%Y-%m-%d %H:%M} " + ("failed" if row.check_error else "ok"),
                describe_keep(row.keep),
                row.location,
            )
            for row in rows
        ]
        widths = [max(len(line[i]) for line in table) for i in range(6)]
        for line in table:
            cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
            self.stdout.write("  ".join([*cells, line[6]]))

    def check(self, options):
        try:
            storage = storage_named(options["name"])
        except StorageRefused as refused:
            raise usage_error(str(refused)) from None
        problem = storage_check(storage)
        if problem:
            raise failed_error(problem)
        self.stdout.write(
            f"Storage {options['name']!r} works: a probe was written, read back and deleted."
        )
