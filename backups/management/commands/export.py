"""`export [FILE]`: write the catalog's storages, policies and sources as a fleet file."""

from __future__ import annotations

from pathlib import Path

from backups.cli import CliCommand, usage_error
from backups.services.fleet import FleetRefused, fleet_export, fleet_write


class Command(CliCommand):
    help = (
        "Write the storages, policies and sources as a fleet file (see `apply`), to standard "
        "output or to FILE, replaced atomically."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", metavar="FILE", help="default: standard output")

    def handle(self, *args, **options):
        text = fleet_export()
        if not options["file"]:
            self.stdout.write(text, ending="")
            return
        path = Path(options["file"])
        try:
            fleet_write(path, text)
        except FleetRefused as error:
            raise usage_error(str(error)) from None
        self.stdout.write(f"Wrote {path}.")
