"""Conventions shared by every command: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    handle_default_options,
)
from django.db import connections

from backups.audit import CommandLineActor, audit_actor

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def usage_error(message: str) -> CommandError:
    """Bad usage or bad input: nothing was changed (exit 2)."""
    return CommandError(message, returncode=EXIT_USAGE)


def busy_error(message: str) -> CommandError:
    """Refused because the source is busy (exit 3)."""
    return CommandError(message, returncode=EXIT_BUSY)


def failed_error(message: str) -> CommandError:
    """The run failed (exit 1)."""
    return CommandError(message, returncode=EXIT_FAILED)


def validation_message(error: ValidationError) -> str:
    """Flatten a ValidationError into one line naming the field and the problem."""
    if hasattr(error, "error_dict"):
        parts = []
        for field, errors in error.message_dict.items():
            prefix = "" if field == "__all__" else f"{field.replace('_s', '')}: "
            parts.append(prefix + " ".join(errors))
        return "; ".join(parts)
    return " ".join(error.messages)


class OneLineParser(CommandParser):
    """An argument parser whose errors are one line and exit 2 (bad usage)."""

    def error(self, message):
        if self.called_from_command_line:
            sys.stderr.write(f"error: {message} (see --help)\n")
            sys.exit(EXIT_USAGE)
        raise CommandError(f"Error: {message}", returncode=EXIT_USAGE)


class CliCommand(BaseCommand):
    """A management command that prints `error: …` on one line and exits with its code."""

    # Django's system checks guard the start of the web server and the workers (`serve`,
    # `qcluster` and `migrate` run them); an operator's command skips them, as they load the
    # URLs and the admin on every call, and the settings are checked as they load anyway.
    requires_system_checks = []

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # Subparsers are built from type(parser), so they inherit the one-line errors.
        parser.__class__ = OneLineParser
        return parser

    def subcommands(self, parser):
        """Add subcommands (`source add`, `source list`) with the same one-line errors."""
        return parser.add_subparsers(dest="action", required=True, parser_class=OneLineParser)

    def run_from_argv(self, argv):
        # Django's version prefixes errors with the exception's class name; users and
        # scripts get a plain `error: …` line and the contract's exit code instead.
        self._called_from_command_line = True
        # A file name need not be UTF-8: Python hands its bad bytes over as surrogate
        # escapes, and the terminal gets those bytes back as they are, not a traceback.
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="surrogateescape")
        parser = self.create_parser(argv[0], argv[1])
        options = parser.parse_args(argv[2:])
        cmd_options = vars(options)
        args = cmd_options.pop("args", ())
        handle_default_options(options)
        try:
            self.execute(*args, **cmd_options)
        except CommandError as error:
            if options.traceback:
                raise
            self.stderr.write(f"error: {error}")
            sys.exit(error.returncode)
        except KeyboardInterrupt:
            self.stderr.write("interrupted")
            sys.exit(130)
        finally:
            connections.close_all()

    def execute(self, *args, **options):
        # What a command does is recorded in the audit log under the operating-system
        # account that ran it (`cli:alice`), not as the system.
        try:
            with audit_actor(CommandLineActor.current()):
                return super().execute(*args, **options)
        except ValidationError as error:
            raise usage_error(validation_message(error)) from None

    def print_json(self, data: Any) -> None:
        """Write one JSON object to stdout.

        Text is written as UTF-8, except the bytes of a file name that are not UTF-8: they
        are written as `\\udcXX` escapes, as manifest.json writes them, and decode back to
        the same name (Python's json module, with os.fsencode).
        """
        text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
        self.stdout.write(_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text))
