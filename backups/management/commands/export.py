"""`export [FILE]`: write the catalog's policies and sources as a fleet file."""

from __future__ import annotations

from pathlib import Path

from backups.cli import CliCommand, usage_error
from backups.engine.atomic import write_atomic
from backups.engine.errors import EngineError
from backups.services.fleet import fleet_export


class Command(CliCommand):
    help = (
        "Write the policies and sources as a fleet file (see `apply`), to standard output "
        "or to FILE, replaced atomically."
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
            write_atomic(path, text.encode())
        except FileExistsError as error:
            raise usage_error(
                f"Cannot write {path}: {error.filename} exists (left by an export that was "
                "interrupted, or one running now); remove it and export again."
            ) from None
        except (OSError, EngineError) as error:
            raise usage_error(
                f"Cannot write {path}: {getattr(error, 'strerror', error)}."
            ) from None
        self.stdout.write(f"Wrote {path}.")
