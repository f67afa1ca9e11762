"""`status [--json]`: each source's RPO/RTO standing, integrity, last backup, next run."""

from __future__ import annotations

import json

from django.utils import timezone

from backups.cli import CliCommand
from backups.services.compliance import (
    Integrity,
    RpoStatus,
    Standing,
    fleet_standing,
    standing_to_dict,
)
from backups.services.formats import format_duration

GOOD = {RpoStatus.OK, Integrity.OK}
BAD = {RpoStatus.BREACHED, Integrity.FAILED}


class Command(CliCommand):
    help = "Show where every source stands against its RPO and RTO targets."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options):
        now = timezone.now()
        standings = fleet_standing(now=now)
        if options["json"]:
            self.stream_json(standings)
            return
        if not standings:
            self.stdout.write("No sources. Add one with `source add`.")
            return
        header = (
            "SOURCE",
            "KIND",
            "LAST SUCCESS",
            "RPO",
            "RTO",
            "INTEGRITY",
            "30D",
            "MISSED",
            "NEXT RUN",
            "ACTIVE",
        )
        rows = [self.row(standing, now) for standing in standings]
        widths = [
            max(len(header[i]), *(len(row[i][0]) for row in rows)) for i in range(len(header))
        ]
        self.stdout.write(
            "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
        )
        for row in rows:
            # Pad before colouring: escape codes have no width on a terminal.
            cells = [
                self.paint(text.ljust(width), tone)
                for (text, tone), width in zip(row, widths, strict=True)
            ]
            self.stdout.write("  ".join(cells).rstrip())
        for standing in standings:
            if standing.rpo_note:
                self.stdout.write(f"{standing.source.name}: {standing.rpo_note}")

    def stream_json(self, standings: list[Standing]) -> None:
        """Write `{"sources": [...]}` one source at a time, never the whole text at once."""
        self.stdout.write('{\n  "sources": [', ending="")
        for index, standing in enumerate(standings):
            entry = json.dumps(standing_to_dict(standing), indent=2, ensure_ascii=False)
            separator = "," if index else ""
            self.stdout.write(separator + "\n    " + entry.replace("\n", "\n    "), ending="")
        self.stdout.write("\n  ]\n}" if standings else "]\n}")

    def paint(self, text: str, tone: str) -> str:
        if tone == "good":
            return self.style.SUCCESS(text)
        if tone == "bad":
            return self.style.ERROR(text)
        if tone == "warn":
            return self.style.WARNING(text)
        return text

    @staticmethod
    def tone(status: str) -> str:
        return "good" if status in GOOD else "bad" if status in BAD else "warn"

    def row(self, standing: Standing, now) -> list[tuple[str, str]]:
        if standing.rpo_note:
            age = "in the future"
        elif standing.age_s is not None:
            age = f"{format_duration(standing.age_s)} ago"
        else:
            age = "never"
        rpo = standing.rpo_status + (
            f" ({format_duration(standing.rpo_s)})" if standing.rpo_s else ""
        )
        rto = standing.rto_status + (
            f" ({format_duration(standing.rto_s)})" if standing.rto_s else ""
        )
        within = (
            f"{100 * standing.within_target_30d:.0f}%"
            if standing.within_target_30d is not None
            else "-"
        )
        if standing.next_run_at is None:
            planned = "-" if standing.source.enabled else "disabled"
        elif standing.next_run_at <= now:
            planned = "due now"
        else:
            planned = f"in {format_duration((standing.next_run_at - now).total_seconds())}"
        active = standing.running
        return [
            (standing.source.name, ""),
            (standing.source.kind, ""),
            (age, ""),
            (rpo, self.tone(standing.rpo_status)),
            (rto, self.tone(standing.rto_status)),
            (standing.integrity, self.tone(standing.integrity)),
            (within, ""),
            (str(standing.missed_30d), "warn" if standing.missed_30d else ""),
            (planned, ""),
            (f"{active.kind} #{active.pk} {active.status}" if active else "-", ""),
        ]
