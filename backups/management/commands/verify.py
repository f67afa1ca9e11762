"""`verify RUN [--drill] [--wait | --inline] [--json]`."""

from __future__ import annotations

from backups.cli import CliCommand, usage_error
from backups.management.runner import add_mode_arguments, execute_and_report
from backups.models import Run
from backups.services.verify import verify_request


class Command(CliCommand):
    help = "Verify a backup: checksum, contents, database checks; --drill restores it too."

    def add_arguments(self, parser):
        parser.add_argument("run", type=int, help="the id of the backup run to verify")
        parser.add_argument("--drill", action="store_true", help="also restore it to scratch")
        add_mode_arguments(parser)

    def handle(self, *args, **options):
        backup = Run.objects.select_related("source__policy").filter(pk=options["run"]).first()
        if backup is None or backup.kind != Run.Kind.BACKUP:
            raise usage_error(f"There is no backup run #{options['run']}.")
        if backup.status not in Run.GOOD or not backup.archive:
            raise usage_error(
                f"Backup #{backup.pk} {backup.status}; only a succeeded backup has an archive "
                "to verify."
            )
        run = verify_request(
            backup=backup,
            trigger=Run.Trigger.CLI,
            drill=options["drill"],
            enqueue=not options["inline"],
        )
        if run.already_active:
            what = "drill" if run.drill else "verification"
            self.stderr.write(
                f"A {what} of backup #{backup.pk} is already {run.status} as run #{run.pk}; "
                "no second one was queued."
            )
            if options["inline"] and run.status == Run.Status.RUNNING:
                # Someone else executes it: follow it rather than claim it.
                options = {**options, "inline": False, "wait": True}
        execute_and_report(self, run, options)
