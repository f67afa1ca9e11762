"""`import_archives [--root DIR | --storage NAME]`: rebuild runs and manifests from archives."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from backups.cli import CliCommand, usage_error
from backups.services.importer import ImportRefused, import_archives
from backups.services.storages import StorageRefused, storage_named


class Command(CliCommand):
    help = "Rebuild the catalog from ARCHIVE_ROOT, and index missing file lists (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--root", type=Path, default=None)
        parser.add_argument(
            "--storage", metavar="NAME", help="import from this storage, not ARCHIVE_ROOT"
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        root = options["root"] or settings.ARCHIVE_ROOT
        try:
            storage = storage_named(options["storage"])
            if storage is not None and options["root"]:
                raise StorageRefused("Give --root or --storage, not both.")
            report = import_archives(root, storage=storage)
        except (ImportRefused, StorageRefused) as error:
            raise usage_error(str(error)) from None
        if options["json"]:
            self.print_json(
                {
                    "imported": report.imported,
                    "known": report.known,
                    "reindexed": report.reindexed,
                    "sources_created": report.sources_created,
                    "refused": report.refused,
                }
            )
        else:
            self.stdout.write(
                f"Imported {len(report.imported)} backup(s), {report.known} already known"
                + (
                    f", {len(report.reindexed)} known one(s) whose file list was indexed again"
                    if report.reindexed
                    else ""
                )
                + (
                    f"; recreated source(s) {', '.join(report.sources_created)}"
                    if report.sources_created
                    else ""
                )
                + "."
            )
            for line in report.refused:
                self.stderr.write(f"refused: {line}")
        if report.refused:
            raise usage_error(f"{len(report.refused)} manifest(s) could not be imported.")
