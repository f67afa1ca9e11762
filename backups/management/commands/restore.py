"""`restore RUN (--to TARGET | --in-place --yes) [--path P]... [--from STORAGE] [--wait | …]`."""

from __future__ import annotations

from backups.cli import CliCommand, busy_error, usage_error
from backups.management.runner import add_mode_arguments, execute_and_report
from backups.models import Run
from backups.services.restore import RestoreRefused, catalog_paths, restore_request
from backups.services.runs import SourceBusy
from backups.services.storages import StorageRefused, storage_named


class Command(CliCommand):
    help = "Restore a backup to a new location or in place (verified before anything moves)."

    def add_arguments(self, parser):
        parser.add_argument("run", type=int, help="the id of the backup run to restore")
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--to", metavar="TARGET", help="a new or empty location")
        where.add_argument("--in-place", action="store_true", help="replace the source's data")
        parser.add_argument("--yes", action="store_true", help="confirm an in-place restore")
        parser.add_argument(
            "--path",
            action="append",
            default=[],
            metavar="P",
            help="restore only this path (relative to the source root) and what is below it",
        )
        parser.add_argument(
            "--from",
            dest="read_from",
            metavar="STORAGE",
            help="read the backup from this storage (its own, or one holding a copy)",
        )
        add_mode_arguments(parser)

    def handle(self, *args, **options):
        backup = Run.objects.select_related("source__policy").filter(pk=options["run"]).first()
        if backup is None:
            raise usage_error(
                f"There is no run #{options['run']}; `runs --kind backup` lists them."
            )
        if options["in_place"] and not options["yes"]:
            raise usage_error(
                f"An in-place restore replaces the live data of {backup.source.name!r} "
                f"at {backup.source.location}; add --yes to confirm."
            )
        try:
            read_from = storage_named(options["read_from"])
        except StorageRefused as refused:
            raise usage_error(str(refused)) from None
        try:
            run = restore_request(
                backup=backup,
                target=options["to"],
                in_place=options["in_place"],
                paths=catalog_paths(options["path"]),
                trigger=Run.Trigger.CLI,
                enqueue=not options["inline"],
                read_from=read_from,
                pick=options["read_from"] is not None,
            )
        except RestoreRefused as refused:
            raise usage_error(str(refused)) from None
        except SourceBusy as busy:
            raise busy_error(str(busy)) from None
        execute_and_report(self, run, options)
