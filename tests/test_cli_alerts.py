"""`alerts`, `alerts ack`, `alerts silence`, `notify test`, and `--notify` on policies and
sources: exit codes as every command's (0 ok, 1 failed, 2 bad input with one line)."""

import json
import shutil
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from backups.models import Alert, AuditEvent, Policy, Run, Silence, Source
from backups.services.backup import backup_request
from backups.services.execution import run_execute
from tests.notify_helpers import free_port, write_config

# Runs are executed as a worker does, which opens its own database connection.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def firing(watched, data_dir):
    """A source whose newest backup failed: its `backup_failed` alert is firing."""
    source = watched
    shutil.rmtree(data_dir)
    run_execute(backup_request(source=source, trigger=Run.Trigger.CLI).pk)
    return Alert.objects.get(source=source, condition="backup_failed")


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def refused(*args) -> str:
    with pytest.raises(CommandError) as caught:
        call_command(*args, stdout=StringIO())
    assert caught.value.returncode == 2
    return str(caught.value)


def test_alerts_lists_what_fires_with_its_numbers(firing):
    text = run("alerts")
    header, row = text.splitlines()[:2]
    assert header.split() == ["ID", "STATE", "SOURCE", "CONDITION", "SINCE", "ACKNOWLEDGED"]
    assert row.split()[:5] == [str(firing.pk), "firing", "files", "Backup", "failed"]
    assert f"#{firing.pk}: Backup #" in text


def test_alerts_json_is_one_object(firing):
    (alert,) = json.loads(run("alerts", "--json"))["alerts"]
    assert alert["id"] == firing.pk
    assert (alert["source"], alert["condition"], alert["state"]) == (
        "files",
        "backup_failed",
        "firing",
    )
    assert alert["acknowledged_by"] is None and alert["silenced_until"] is None


def test_ack_records_who_with_the_note_and_is_audited(firing):
    assert "Acknowledged alert" in run("alerts", "ack", str(firing.pk), "--note", "disk swapped")
    firing.refresh_from_db()
    assert firing.acknowledged_by_name.startswith("cli:")
    assert firing.ack_note == "disk swapped"
    event = AuditEvent.objects.get(action="alert.acknowledge")
    assert event.actor_name == firing.acknowledged_by_name
    assert event.detail["note"] == "disk swapped"


def test_ack_of_an_unknown_or_resolved_alert_is_refused(firing):
    assert "No alert #999" in refused("alerts", "ack", "999")
    Alert.objects.filter(pk=firing.pk).update(state="resolved")
    assert "not firing" in refused("alerts", "ack", str(firing.pk))
    assert not AuditEvent.objects.filter(action="alert.acknowledge").exists()


def test_silence_a_source_for_a_while(firing):
    assert "Silenced files" in run("alerts", "silence", "files", "--for", "2h", "--note", "move")
    silence = Silence.objects.get()
    assert (silence.source.name, silence.condition, silence.note) == ("files", "", "move")
    assert AuditEvent.objects.filter(action="alert.silence").count() == 1
    (alert,) = json.loads(run("alerts", "--json"))["alerts"]
    assert alert["silenced_until"] == silence.until.isoformat()


@pytest.mark.parametrize(
    "args, message",
    [
        (["nosuch", "--for", "1h"], "Unknown source 'nosuch'"),
        (["files", "--condition", "bogus", "--for", "1h"], "Unknown condition 'bogus'"),
        (["--for", "1h"], "Name a source, a condition, or both"),
        (["files", "--for", "90d"], "A silence lasts from 1m to"),
    ],
)
def test_silence_refuses_bad_input_and_changes_nothing(firing, args, message):
    assert message in refused("alerts", "silence", *args)
    assert not Silence.objects.exists()


def test_silence_refuses_a_bad_duration(firing):
    with pytest.raises(CommandError) as caught:
        call_command("alerts", "silence", "files", "--for", "soon", stderr=StringIO())
    assert caught.value.returncode == 2


def test_notify_test_says_each_target_accepted(db, settings, tmp_path, webhook):
    settings.APPRISE_CONFIG = write_config(tmp_path / "apprise.yml", [(webhook.url, "ops")])
    text = run("notify", "test", "ops")
    assert text.startswith("ok      json://127.0.0.1:")
    (message,) = webhook.messages
    assert message["title"] == "[TEST] Backup alerts reach this target (tag ops)"


def test_notify_test_fails_when_a_target_refuses(db, settings, tmp_path, webhook):
    dead = f"json://127.0.0.1:{free_port()}/hook"
    settings.APPRISE_CONFIG = write_config(
        tmp_path / "apprise.yml", [(webhook.url, "ops"), (dead, "ops")]
    )
    out = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("notify", "test", "ops", stdout=out)
    assert caught.value.returncode == 1
    assert "1 of 2 target(s) refused" in str(caught.value)
    assert "FAILED  json://127.0.0.1:" in out.getvalue()
    assert len(webhook.messages) == 1


def test_notify_test_of_an_unknown_tag_or_without_a_config_is_bad_input(db, settings, tmp_path):
    settings.APPRISE_CONFIG = None
    assert "APPRISE_CONFIG is not set" in refused("notify", "test", "ops")
    settings.APPRISE_CONFIG = write_config(tmp_path / "a.yml", [("json://127.0.0.1:9/x", "ops")])
    assert "No target in APPRISE_CONFIG has the tag 'dba' (tags there: ops)" in refused(
        "notify", "test", "dba"
    )


def test_policy_and_source_add_take_notify_tags(data_dir):
    run("policy", "add", "p", "--notify", "ops", "--notify", "dba")
    run("source", "add", "s", "--kind", "directory", "--location", str(data_dir),
        "--policy", "p", "--notify", "web-oncall")  # fmt: skip
    assert Policy.objects.get().notify == "ops,dba"
    assert Source.objects.get().notify == "web-oncall"


def test_a_bad_notify_tag_is_refused(data_dir):
    assert "is not a notification tag" in refused("policy", "add", "p", "--notify", "o ps!")
    assert not Policy.objects.exists()


def test_the_fleet_file_carries_notify_tags_both_ways(data_dir, tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "version: 1\n"
        "policies:\n  p: {notify: [ops, dba]}\n"
        f"sources:\n  s: {{kind: directory, location: {data_dir}, policy: p, notify: web}}\n"
    )
    run("apply", str(fleet))
    assert Policy.objects.get().notify == "ops,dba"
    assert Source.objects.get().notify == "web"
    exported = tmp_path / "export.yaml"
    run("export", str(exported))
    text = exported.read_text()
    assert "notify:\n    - ops\n    - dba" in text and "notify:\n    - web" in text
    assert "No changes" in run("apply", str(exported))
