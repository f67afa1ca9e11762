"""`alerts [--json]`, `alerts ack ID [--note TEXT]`, `alerts silence SOURCE [--condition C]
--for DUR [--note TEXT]`: what is firing, and who is on it."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from backups.cli import CliCommand, OneLineParser, usage_error
from backups.management.commands.policy import duration
from backups.models import Alert, Source
from backups.services.alerts import (
    AlertRefused,
    alert_acknowledge,
    alert_silenced_until,
    alert_to_dict,
    condition_label,
    silence_create,
    silences_active,
)

# Resolved alerts stay in the list this long.
RECENT = timedelta(hours=24)


class Command(CliCommand):
    help = "List alerts (firing first), acknowledge one, or silence a source or a condition."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        actions = parser.add_subparsers(dest="action", required=False, parser_class=OneLineParser)
        ack = actions.add_parser("ack", help="Acknowledge a firing alert: you are on it.")
        ack.add_argument("id", type=int, metavar="ID")
        ack.add_argument("--note", default="")
        silence = actions.add_parser(
            "silence", help="Notify nobody about a source (or a condition) for a while."
        )
        silence.add_argument("source", nargs="?", metavar="SOURCE")
        silence.add_argument("--condition", default="", metavar="C")
        silence.add_argument("--for", dest="duration", type=duration, required=True, metavar="DUR")
        silence.add_argument("--note", default="")

    def handle(self, *args, **options):
        action = options.get("action")
        if action == "ack":
            self.ack(options)
        elif action == "silence":
            self.silence(options)
        else:
            self.list(options)

    def list(self, options):
        now = timezone.now()
        alerts = list(
            Alert.objects.filter(state=Alert.State.FIRING)
            .select_related("source")
            .order_by("-since", "-pk")
        ) + list(
            Alert.objects.filter(state=Alert.State.RESOLVED, since__gte=now - RECENT)
            .select_related("source")
            .order_by("-since", "-pk")
        )
        silences = silences_active(now=now)
        if options["json"]:
            self.print_json({"alerts": [alert_to_dict(alert, silences) for alert in alerts]})
            return
        if not alerts:
            self.stdout.write("No alert is firing, and none resolved in the last 24 hours.")
            return
        rows = [("ID", "STATE", "SOURCE", "CONDITION", "SINCE", "ACKNOWLEDGED")]
        notes = []
        for alert in alerts:
            until = alert_silenced_until(alert, silences)
            state = alert.state + (" (silenced)" if until else "")
            rows.append(
                (
                    str(alert.pk),
                    state,
                    alert.source.name if alert.source_id else "(fleet)",
                    condition_label(alert.condition),
                    f"{alert.since:%Y-%m-%d %H:%M}",
                    alert.acknowledged_by_name or "-",
                )
            )
            notes.append(f"#{alert.pk}: {alert.detail}" if alert.is_firing else "")
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
            self.stdout.write("  ".join(cells).rstrip())
        for note in filter(None, notes):
            self.stdout.write(note)

    def ack(self, options):
        alert = Alert.objects.select_related("source").filter(pk=options["id"]).first()
        if alert is None:
            raise usage_error(f"No alert #{options['id']}; `alerts` lists them.")
        try:
            alert = alert_acknowledge(alert=alert, actor=None, note=options["note"])
        except AlertRefused as refused:
            raise usage_error(str(refused)) from None
        self.stdout.write(
            f"Acknowledged alert #{alert.pk} ({alert.summary}) as {alert.acknowledged_by_name}."
        )

    def silence(self, options):
        source = None
        if options["source"]:
            source = Source.objects.filter(name=options["source"]).first()
            if source is None:
                raise usage_error(
                    f"Unknown source {options['source']!r}; `source list` shows the names."
                )
        try:
            silence = silence_create(
                source=source,
                condition=options["condition"],
                duration=timedelta(seconds=options["duration"]),
                actor=None,
                note=options["note"],
            )
        except AlertRefused as refused:
            raise usage_error(str(refused)) from None
        what = " ".join(
            filter(None, [source.name if source else "", condition_label(silence.condition)])
        )
        self.stdout.write(
            f"Silenced {what} until {timezone.localtime(silence.until):%Y-%m-%d %H:%M %Z}."
        )
