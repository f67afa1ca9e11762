"""`prune [--source NAME] [--dry-run] [--json]`: apply the policies' retention rules."""

from __future__ import annotations

import sys

from backups.cli import EXIT_FAILED, CliCommand, usage_error
from backups.management.commands.backup import get_source
from backups.services.prune import PruneRefused, prune_execute


class Command(CliCommand):
    help = (
        "Remove the backups the policies no longer keep (restic `forget` rules); "
        "--dry-run lists every backup with keep/remove and the rules that keep it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--source", help="only this source (default: every source)")
        parser.add_argument("--dry-run", action="store_true", help="remove nothing; show why")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options):
        source = get_source(options["source"]) if options["source"] else None
        try:
            report = prune_execute(source=source, dry_run=options["dry_run"])
        except PruneRefused as refused:
            raise usage_error(str(refused)) from None
        if options["json"]:
            self.print_json(report)
        elif options["dry_run"]:
            self.print_plan(report)
        else:
            self.print_outcome(report)
        for skipped in report["skipped"]:
            self.stderr.write(f"skipped: {skipped['reason']}")
        for problem in report["problems"]:
            self.stderr.write(f"warning: {problem}")
        # A discrepancy held removals back: scripts and cron must notice.
        if report["problems"] and not options["dry_run"]:
            sys.exit(EXIT_FAILED)

    def print_plan(self, report: dict) -> None:
        if not report["keep"] and not report["remove"]:
            self.stdout.write("No backups to consider.")
            return
        self.stdout.write(
            f"{'ID':>6}  {'STARTED':25}  {'ACTION':6}  {'SOURCE':20}  {'STORAGE':12}  REASONS"
        )
        for part in report["storages"]:
            rows = [(entry, "keep", ", ".join(entry["reasons"])) for entry in part["keep"]]
            rows += [(entry, "remove", "") for entry in part["remove"]]
            rows.sort(key=lambda row: row[0]["started_at"] or "", reverse=True)
            for entry, action, reasons in rows:
                self.stdout.write(
                    f"{entry['id']:>6}  {entry['started_at'] or '-':25}  {action:6}  "
                    f"{entry['source']:20}  {part['storage']:12}  {reasons}"
                )
        for part in report["storages"]:
            what = "backups" if part["role"] == "primary" else "copies"
            rules = ", ".join(f"{rule} {n}" for rule, n in part["rules"].items())
            self.stdout.write(
                f"{part['source']} in {part['storage']} ({what}, keep {rules}): would remove "
                f"{len(part['remove'])}, keep {len(part['keep'])}."
            )
        self.stdout.write(
            f"Would remove {len(report['remove'])} backup(s) and keep {len(report['keep'])}. "
            "Nothing was changed."
        )

    def print_outcome(self, report: dict) -> None:
        for entry in report["remove"]:
            self.stdout.write(f"removed backup #{entry['id']} of {entry['source']}")
        self.stdout.write(f"Removed {len(report['remove'])} backup(s); kept {len(report['keep'])}.")
