"""`backup SOURCE [--level LEVEL] [--rehash] [--wait | --inline] [--dry-run] [--json]`."""

from __future__ import annotations

from backups.cli import CliCommand, busy_error, usage_error
from backups.management.runner import add_mode_arguments, execute_and_report
from backups.models import Run, Source
from backups.services.backup import PlanRefused, backup_plan, backup_request
from backups.services.formats import format_bytes, format_duration
from backups.services.runs import SourceBusy


def get_source(name: str) -> Source:
    """Return the source named `name`, or exit 2 naming the known ones."""
    source = Source.objects.select_related("policy").filter(name=name).first()
    if source is None:
        known = ", ".join(Source.objects.values_list("name", flat=True)[:20]) or "none yet"
        raise usage_error(f"Unknown source {name!r} (known: {known}).")
    return source


class Command(CliCommand):
    help = "Back up a source now."

    def add_arguments(self, parser):
        parser.add_argument("source")
        add_mode_arguments(parser)
        parser.add_argument("--dry-run", action="store_true", help="print the plan only")
        parser.add_argument(
            "--level",
            choices=Run.Level.values,
            help="take this level, whatever the policy says (a differential or incremental "
            "falls back to a full, with a warning, when it has no usable base)",
        )
        parser.add_argument(
            "--rehash",
            action="store_true",
            help="read and hash every file, and report those whose content changed while "
            "their size, mtime, inode and ctime did not",
        )

    def handle(self, *args, **options):
        source = get_source(options["source"])
        if options["dry_run"]:
            return self.dry_run(source, options["json"])
        try:
            run = backup_request(
                source=source,
                trigger=Run.Trigger.CLI,
                enqueue=not options["inline"],
                level=options["level"] or "",
                rehash=options["rehash"],
            )
        except SourceBusy as busy:
            raise busy_error(str(busy)) from None
        execute_and_report(self, run, options)

    def dry_run(self, source: Source, as_json: bool) -> None:
        try:
            plan = backup_plan(source)
        except PlanRefused as error:
            raise usage_error(str(error)) from None
        if as_json:
            self.print_json(plan)
            return
        estimate = plan["estimated_duration_s"]
        self.stdout.write(
            f"Would back up {source.name} ({source.kind} {source.location}): "
            f"{plan['files']:,} files, {format_bytes(plan['bytes'])}"
            + (f", about {format_duration(max(1, int(estimate)))}" if estimate else "")
            + ". Nothing was written."
        )
        if plan["excluded_count"]:
            self.stdout.write(f"Excluded {plan['excluded_count']:,} path(s):")
            for path in plan["excluded"]:
                self.stdout.write(f"  {path}")
