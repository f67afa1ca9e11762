"""Real database faults for tests: triggers that make the database itself refuse a write."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

from django.db import connection


@contextlib.contextmanager
def database_refuses(table: str, event: str, when: str, message: str) -> Iterator:
    """Make the database refuse `event` (INSERT or UPDATE) on `table` while `when` holds.

    `when` is an SQL condition on NEW and OLD that both SQLite and PostgreSQL read. Yield
    a function that lifts the refusal (it is lifted on exit in any case): the trigger is
    a schema change, which outlives the test's transaction in a transactional test.
    """
    name = f"refuse_{secrets.token_hex(4)}"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF {when} THEN RAISE EXCEPTION '{message}'; END IF; RETURN NEW; END $$"
            )
            cursor.execute(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {name}()"
            )
        else:
            cursor.execute(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {when} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )

    def lift() -> None:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
                cursor.execute(f"DROP FUNCTION IF EXISTS {name}()")
            else:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")

    try:
        yield lift
    finally:
        lift()
