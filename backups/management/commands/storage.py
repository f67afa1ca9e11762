"""`storage add|list|check`: where archives are written, ARCHIVE_ROOT or a named storage."""

from __future__ import annotations

from backups.audit import audit_record, field_changes, field_values
from backups.cli import CliCommand, failed_error, usage_error
from backups.models import Storage
from backups.services.formats import format_bytes
from backups.services.storages import (
    StorageRefused,
    storage_check,
    storage_create,
    storage_named,
    storage_rows,
)


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
        add.add_argument("--json", action="store_true")
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

    def list(self, options):
        rows = storage_rows()
        if options["json"]:
            self.print_json({"storages": [row.to_dict() for row in rows]})
            return
        table = [("NAME", "KIND", "ARCHIVES", "SIZE", "LAST CHECK", "LOCATION")] + [
            (
                row.name,
                row.kind,
                str(row.archives),
                format_bytes(row.bytes),
                "-"
                if row.checked_at is None
                else f"{row.checked_at:%Y-%m-%d %H:%M} " + ("failed" if row.check_error else "ok"),
                row.location,
            )
            for row in rows
        ]
        widths = [max(len(line[i]) for line in table) for i in range(5)]
        for line in table:
            cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
            self.stdout.write("  ".join([*cells, line[5]]))

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
