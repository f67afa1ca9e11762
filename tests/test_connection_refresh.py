"""connection_refresh: what a run calls after long engine work, before it writes again."""

import pytest
from django.db import connection

from backups.models import Source
from backups.services.runs import connection_refresh
from tests.cli_helpers import manage_shell


def test_a_sqlite_connection_is_kept(tmp_path):
    # A file cannot drop a connection: replacing it would only cost a WAL checkpoint and a
    # new connection. (The suite's in-memory SQLite never closes, so a real file, here.)
    probe = (
        "from django.db import connection\n"
        "from backups.services.runs import connection_refresh\n"
        "connection.cursor().execute('select 1')\n"
        "opened = connection.connection\n"
        "connection_refresh()\n"
        "connection.cursor().execute('select 1')\n"
        "print(connection.vendor, connection.connection is opened)\n"
    )
    assert manage_shell(probe, tmp_path / "db.sqlite3").split() == ["sqlite", "True"]


@pytest.mark.django_db(transaction=True)
def test_a_connection_past_its_age_is_replaced_unless_it_is_sqlite():
    Source.objects.exists()
    opened = connection.connection
    connection.close_at = 0  # past its age, as after hours of engine work
    connection_refresh()
    Source.objects.exists()
    assert (connection.connection is opened) == (connection.vendor == "sqlite")
