"""`apply FILE` and `export [FILE]`: the fleet as code, all or nothing, idempotent, audited."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_q.models import Schedule

from backups.engine.fleetfile import load_fleet
from backups.models import AuditEvent, Policy, Run, Source
from backups.services.catalog import policy_create, source_create
from backups.services.fleet import FleetRefused, fleet_apply, fleet_plan
from backups.services.timetable import BACKUP_TASK

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def folders(tmp_path):
    """Two directories to back up."""
    paths = {}
    for name in ("web", "docs"):
        paths[name] = tmp_path / "data" / name
        paths[name].mkdir(parents=True)
        (paths[name] / "index.html").write_text(f"{name}\n")
    return paths


def fleet_text(folders) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        policies:
          hourly:
            schedule: "0 * * * *"
            rpo: 1h
            rto: 30m
            keep_hourly: 24
            keep_daily: 7
            drill_every: 7d
          nightly:
            schedule: "0 3 * * *"
            compression: gzip
            compression_level: 9
            keep_last: 3
            verify_after_backup: false
            run_timeout: 2h
            check_queries:
              - sql: SELECT COUNT(*) FROM t
                expect: "> 0"
        sources:
          web:
            kind: directory
            location: {folders["web"]}
            policy: hourly
            excludes: ["*.tmp", "cache/*"]
            owner: alice
            notes: |
              Uploads.
              Two lines.
          docs:
            kind: directory
            location: {folders["docs"]}
            policy: nightly
          api:
            kind: kubernetes
            location: prod/api-0/app:/var/lib/data
            policy: hourly
            enabled: false
          app-db:
            kind: postgres
            location: postgresql://app@db:5432/app
        """
    )


def write(tmp_path, text, name="fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def apply(*args) -> str:
    out = StringIO()
    call_command("apply", *map(str, args), stdout=out)
    return out.getvalue()


def apply_refused(*args) -> str:
    with pytest.raises(CommandError) as caught:
        apply(*args)
    assert caught.value.returncode == 2
    return str(caught.value)


def catalog() -> dict:
    """Every stored field of every policy and source, by name (ids and times left out)."""
    skip = {"id", "created_at", "updated_at"}
    policies = {
        p["name"]: {k: v for k, v in p.items() if k not in skip} for p in Policy.objects.values()
    }
    names = {p.pk: p.name for p in Policy.objects.all()}
    sources = {}
    for row in Source.objects.values():
        row["policy_id"] = names.get(row["policy_id"])
        sources[row["name"]] = {k: v for k, v in row.items() if k not in skip}
    return {"policies": policies, "sources": sources}


def backup_schedules() -> dict[str, str]:
    names = dict(Source.objects.values_list("pk", "name"))
    return {
        names[int(args)]: cron
        for args, cron in Schedule.objects.filter(func=BACKUP_TASK).values_list("args", "cron")
    }


def test_apply_creates_the_policies_and_sources_of_the_file(tmp_path, folders):
    output = apply(write(tmp_path, fleet_text(folders)))

    assert f"+ source web (directory {folders['web']}, policy hourly)" in output
    assert "+ source app-db (postgres postgresql://app@db:5432/app)" in output
    assert "+ policy nightly (" in output
    assert "4 created" not in output and "6 created" in output
    hourly = Policy.objects.get(name="hourly")
    assert (hourly.schedule, hourly.rpo_s, hourly.rto_s, hourly.drill_every_s) == (
        "0 * * * *",
        3600,
        1800,
        7 * 86400,
    )
    assert (hourly.keep_hourly, hourly.keep_daily, hourly.keep_last) == (24, 7, 0)
    nightly = Policy.objects.get(name="nightly")
    assert (nightly.compression, nightly.compression_level, nightly.keep_last) == ("gzip", 9, 3)
    assert nightly.verify_after_backup is False and nightly.run_timeout_s == 7200
    assert nightly.check_queries == [{"sql": "SELECT COUNT(*) FROM t", "expect": "> 0"}]
    web = Source.objects.get(name="web")
    assert (web.kind, web.location, web.policy, web.slug) == (
        "directory",
        str(folders["web"]),
        hourly,
        "web",
    )
    assert web.excludes == ["*.tmp", "cache/*"]
    assert (web.owner, web.notes, web.enabled) == ("alice", "Uploads.\nTwo lines.\n", True)
    assert Source.objects.get(name="api").enabled is False
    assert Source.objects.get(name="app-db").policy is None


def test_apply_updates_what_changed_and_prints_old_and_new_values(tmp_path, folders):
    apply(write(tmp_path, fleet_text(folders)))
    changed = fleet_text(folders).replace("rpo: 1h", "rpo: 2h").replace("owner: alice", "")
    changed = changed.replace("policy: nightly", "policy: hourly")

    output = apply(write(tmp_path, changed))

    assert "~ policy hourly: rpo 1h -> 2h" in output.splitlines()
    assert "~ source docs: policy nightly -> hourly" in output.splitlines()
    # A field left out takes its default: the owner is cleared.
    assert "~ source web: owner alice -> ''" in output.splitlines()
    assert "0 created, 3 changed, 0 removed" in output
    assert Policy.objects.get(name="hourly").rpo_s == 7200
    assert Source.objects.get(name="docs").policy.name == "hourly"
    assert Source.objects.get(name="web").owner == ""


def test_applying_the_same_file_twice_changes_nothing_the_second_time(tmp_path, folders):
    path = write(tmp_path, fleet_text(folders))
    apply(path)
    before = catalog()
    events = AuditEvent.objects.count()
    stamps = list(Source.objects.values_list("updated_at", flat=True))

    output = apply(path)

    assert output == f"No changes: the catalog already matches {path}.\n"
    assert catalog() == before
    assert list(Source.objects.values_list("updated_at", flat=True)) == stamps
    assert AuditEvent.objects.count() == events


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path, folders):
    path = write(tmp_path, fleet_text(folders))

    planned = apply(path, "--dry-run")

    assert not Policy.objects.exists() and not Source.objects.exists()
    assert not Schedule.objects.filter(func=BACKUP_TASK).exists()
    assert not AuditEvent.objects.exists()
    assert "Dry run: 6 created, 0 changed, 0 removed; nothing was changed." in planned
    applied = apply(path)
    assert planned.splitlines()[:-1] == applied.splitlines()[:-1]


def test_prune_removes_what_the_file_no_longer_lists_only_when_asked(tmp_path, folders):
    apply(write(tmp_path, fleet_text(folders)))
    smaller = fleet_text(folders).split("  docs:")[0]  # only the web source remains
    smaller = smaller.replace("  nightly:", "  unused: {}\n  nightly:")
    path = write(tmp_path, smaller)

    without = apply(path)
    assert "- " not in without
    assert set(Source.objects.values_list("name", flat=True)) == {"web", "docs", "api", "app-db"}

    planned = apply(path, "--prune", "--dry-run")
    assert set(Source.objects.values_list("name", flat=True)) == {"web", "docs", "api", "app-db"}

    pruned = apply(path, "--prune")

    assert planned.splitlines()[:-1] == pruned.splitlines()[:-1]
    lines = pruned.splitlines()
    assert {"- source docs", "- source api", "- source app-db"} <= set(lines)
    assert set(Source.objects.values_list("name", flat=True)) == {"web"}
    # The policies the file still declares stay, used or not.
    assert set(Policy.objects.values_list("name", flat=True)) == {"hourly", "nightly", "unused"}
    assert set(backup_schedules()) == {"web"}
    del_unused = smaller.replace("  unused: {}\n", "")
    assert "- policy unused" in apply(write(tmp_path, del_unused), "--prune").splitlines()


def test_prune_without_a_sources_section_leaves_the_sources_and_their_policies(tmp_path, folders):
    apply(write(tmp_path, fleet_text(folders)))
    only_policies = "version: 1\npolicies:\n  weekly: {schedule: '0 4 * * 0'}\n"

    output = apply(write(tmp_path, only_policies), "--prune")

    assert Source.objects.count() == 4
    assert set(Policy.objects.values_list("name", flat=True)) == {"hourly", "nightly", "weekly"}
    assert "! policy hourly is kept: source(s) outside the file still use it (api, web)" in output


# A real inline backup commits and closes its connections, as the command does.
@pytest.mark.django_db(transaction=True)
def test_prune_refuses_to_delete_a_source_with_backups_unless_asked_twice(tmp_path, folders):
    path = write(tmp_path, fleet_text(folders))
    apply(path)
    with pytest.raises(SystemExit) as ended:
        call_command("backup", "docs", "--inline", stdout=StringIO(), stderr=StringIO())
    assert ended.value.code == 0
    backup = Run.objects.get(source__name="docs")
    assert backup.status == Run.Status.SUCCEEDED and Path(backup.archive).exists()
    without_docs = write(tmp_path, fleet_text(folders).replace("  docs:", "  old-docs:"))
    without_docs.write_text(
        without_docs.read_text().replace(f"location: {folders['docs']}", "location: /")
    )
    before = catalog()

    message = apply_refused(without_docs, "--prune")

    assert "source 'docs' is not in the file but has 1 backup(s)" in message
    assert "--prune-with-backups" in message
    assert catalog() == before

    retired = apply(without_docs, "--prune-with-backups")

    assert "- source docs (retired: disabled, its 1 backup(s) and history kept)" in retired
    docs = Source.objects.get(name="docs")
    assert docs.enabled is False and docs.policy.name == "nightly"
    assert Run.objects.get(pk=backup.pk).status == Run.Status.SUCCEEDED
    assert Path(backup.archive).exists()
    assert "docs" not in backup_schedules()
    # Retired once, it is left alone: a plain --prune passes and changes nothing.
    assert "No changes" in apply(without_docs, "--prune")
    # Its policy is not removed while the retired source still uses it for retention.
    no_nightly = without_docs.read_text().replace("policy: nightly", "policy: hourly")
    no_nightly = no_nightly.split("  nightly:")[0] + "sources:" + no_nightly.split("sources:")[1]
    output = apply(write(tmp_path, no_nightly), "--prune")
    assert "! policy nightly is kept: source(s) outside the file still use it (docs)" in output
    assert Policy.objects.filter(name="nightly").exists()


def test_a_source_that_gets_a_run_between_plan_and_apply_is_not_deleted(tmp_path, folders):
    apply(write(tmp_path, fleet_text(folders)))
    text = fleet_text(folders).split("  docs:")[0]
    fleet = load_fleet(text.encode(), "fleet.yaml")
    plan = fleet_plan(fleet, prune=True)
    assert [c.describe() for c in plan.changes if c.op == "-"] == [
        "- source api",
        "- source app-db",
        "- source docs",
    ]
    before = catalog()
    Run.objects.create(source=Source.objects.get(name="docs"))

    with pytest.raises(FleetRefused) as caught:
        fleet_apply(plan)

    assert "to delete got a run while applying; nothing was changed" in str(caught.value)
    assert catalog() == before


@pytest.mark.parametrize(
    "typo, wrong, fragment",
    [
        ("    keep_daily: 7", "    keep_dayly: 7", "policy 'hourly': unknown field 'keep_dayly'"),
        ("    owner: alice", "    ownr: alice", "source 'web': unknown field 'ownr'; did you mean"),
        ("sources:", "source:", "unknown top-level key 'source'; did you mean 'sources'?"),
    ],
)
def test_a_typod_field_is_refused_with_its_line_and_nothing_changed(
    tmp_path, folders, typo, wrong, fragment
):
    lines = fleet_text(folders).splitlines()
    line = lines.index(typo) + 1
    lines[line - 1] = wrong
    path = write(tmp_path, "\n".join(lines) + "\n")

    message = apply_refused(path)

    assert message.startswith(f"{path}:{line}: ")
    assert fragment in message
    assert not Policy.objects.exists() and not Source.objects.exists()


@pytest.mark.parametrize(
    "old, new, fragment",
    [
        ("rpo: 1h", "rpo: 3600", "hourly': rpo: 3600 is not a duration"),
        ("keep_last: 3", "keep_last: -1", "nightly': keep_last: -1 is negative"),
        ("enabled: false", "enabled: maybe", "'api': enabled: 'maybe' is not true or false"),
        (
            "compression_level: 9",
            "compression_level: 30",
            "compression_level: Ensure this value is less than or equal to 22. gzip levels go",
        ),
        ('schedule: "0 3 * * *"', 'schedule: "0 3 * *"', "schedule: '0 3 * *' is not a cron"),
        ("location: prod/api-0/app:/var/lib/data", "location: api:/data", "not a pod location"),
        (
            "kind: postgres",
            "kind: ftp",
            "source 'app-db': kind: Value 'ftp' is not a valid choice.",
        ),
        ("    excludes: [", "    exclude: [", "unknown field 'exclude'; did you mean 'excludes'?"),
    ],
)
def test_a_bad_value_anywhere_is_refused_and_nothing_is_created(
    tmp_path, folders, old, new, fragment
):
    bad = fleet_text(folders)
    assert old in bad
    message = apply_refused(write(tmp_path, bad.replace(old, new)))

    assert fragment in message
    assert not Policy.objects.exists() and not Source.objects.exists()
    assert not AuditEvent.objects.exists()


def test_a_missing_directory_in_the_last_source_leaves_the_catalog_untouched(tmp_path, folders):
    apply(write(tmp_path, fleet_text(folders)))
    before = catalog()
    changed = fleet_text(folders).replace("rpo: 1h", "rpo: 4h") + (
        "  late:\n    kind: directory\n    location: /no/such/folder\n"
    )

    message = apply_refused(write(tmp_path, changed))

    assert "source 'late': location: The directory /no/such/folder does not exist." in message
    assert catalog() == before


def test_a_policy_referenced_but_missing_is_refused(tmp_path, folders):
    text = fleet_text(folders).replace("policy: nightly", "policy: nighlty")
    path = write(tmp_path, text)

    message = apply_refused(path)

    line = text.splitlines().index("    policy: nighlty") + 1
    assert message == (
        f"{path}:{line}: source 'docs': policy: unknown policy 'nighlty'; "
        "declare it under policies."
    )
    assert not Source.objects.exists() and not Policy.objects.exists()


def test_a_policy_of_the_catalog_may_be_named_when_the_file_has_no_policies(tmp_path, folders):
    policy_create(name="daily", schedule="0 2 * * *")
    text = f"version: 1\nsources:\n  web: {{kind: directory, location: {folders['web']}, "
    apply(write(tmp_path, text + "policy: daily}\n"))
    assert Source.objects.get(name="web").policy.name == "daily"
    message = apply_refused(write(tmp_path, text.replace("web:", "docs:") + "policy: x}\n"))
    assert "unknown policy 'x'; create it first, or declare it under policies." in message


def test_two_names_with_the_same_archive_folder_are_refused(tmp_path, folders):
    apply(write(tmp_path, fleet_text(folders)))
    text = fleet_text(folders) + f"  Web:\n    kind: directory\n    location: {folders['web']}\n"

    message = apply_refused(write(tmp_path, text))

    assert "source 'Web': its archive folder name 'web' is already taken by source 'web'" in message
    assert "another `slug:`" in message
    apply(write(tmp_path, text + "    slug: web-2\n"))
    assert Source.objects.get(name="Web").slug == "web-2"


def test_a_name_written_twice_is_refused_with_both_lines(tmp_path, folders):
    text = fleet_text(folders) + "  api:\n    kind: kubernetes\n    location: prod/x:/y\n"
    path = write(tmp_path, text)

    message = apply_refused(path)

    first = text.splitlines().index("  api:") + 1
    second = len(text.splitlines()) - 2
    assert (
        message
        == f"{path}:{second}: 'api' is written twice (first on line {first}); keep one of them"
    )
    assert not Source.objects.exists()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "expected a mapping with `version: 2`"),
        ("policies: {}\n", "add `version: 2` at the top of the file."),
        ("version: 3\npolicies: {}\n", "written for fleet file version 3"),
        ("version: 0\npolicies: {}\n", "version must be a whole number from 1 to 2, not 0"),
        ("version: 1\nsources:\n", ":2: sources must be a mapping of names to fields"),
        ("version: 1\nsources:\n  web: [1]\n", "source 'web': give its fields as a mapping"),
        (
            "version: 1\nsources:\n  a:\n    kind: directory\n  location: /x\n",
            ":3: source 'a': location is required.",
        ),
        ("version: 1\npolicies:\n  p: {schedule: */5 * * * *}\n", ":3: not valid YAML"),
    ],
)
def test_a_malformed_file_is_refused_in_one_sentence(tmp_path, text, fragment):
    message = apply_refused(write(tmp_path, text))

    assert fragment in message
    assert "\n" not in message
    assert not Policy.objects.exists()


def test_export_then_apply_reproduces_the_catalog_and_changes_nothing_on_the_same_one(
    tmp_path, folders
):
    # Built by hand, the way a catalog grows before it is written down.
    call_command(
        "policy", "add", "hourly", "--schedule", "*/15 * * * *", "--rpo", "90m",
        "--keep-last", "5", "--drill-every", "14d", "--no-verify", stdout=StringIO(),
    )  # fmt: skip
    policy_create(name="sqlite-checks", check_queries=[{"sql": "SELECT 1"}], compression="none")
    source_create(
        name="Web Site",
        kind="directory",
        location=str(folders["web"]),
        policy=Policy.objects.get(name="hourly"),
        excludes=["*.log"],
        notes="line one\nline 'two': yes\n",
        owner="ops: web",
    )
    Source.objects.create(name="docs", slug="docs-archive", kind="directory",
                          location=str(folders["docs"]), enabled=False)  # fmt: skip
    source_create(name="yes", kind="postgres", location="postgresql://u@h/db")
    exported = tmp_path / "exported.yaml"
    call_command("export", str(exported), stdout=StringIO())
    original = catalog()
    schedules = backup_schedules()

    assert apply(exported, "--prune") == f"No changes: the catalog already matches {exported}.\n"

    Schedule.objects.filter(func=BACKUP_TASK).delete()
    Source.objects.all().delete()
    Policy.objects.all().delete()
    apply(exported)

    assert catalog() == original
    assert backup_schedules() == schedules
    again = StringIO()
    call_command("export", stdout=again)
    assert again.getvalue() == exported.read_text()


def test_export_replaces_the_file_atomically_and_leaves_no_temporary_file(tmp_path, folders):
    apply(write(tmp_path, fleet_text(folders)))
    target = tmp_path / "out" / "fleet.yaml"
    target.parent.mkdir()
    target.write_text("old contents\n")

    call_command("export", str(target), stdout=StringIO())

    assert target.read_text().startswith("version: 2\nstorages: {}\npolicies:\n")
    assert os.listdir(target.parent) == ["fleet.yaml"]
    with pytest.raises(CommandError) as caught:
        call_command("export", str(tmp_path / "missing" / "fleet.yaml"))
    assert caught.value.returncode == 2
    assert "Cannot write" in str(caught.value)


def test_schedules_follow_the_applied_policies(tmp_path, folders):
    path = write(tmp_path, fleet_text(folders))
    apply(path)
    # The disabled source (api) and the one without a policy (app-db) have none.
    assert backup_schedules() == {"web": "0 * * * *", "docs": "0 3 * * *"}

    text = fleet_text(folders).replace('"0 * * * *"', '"30 * * * *"')
    text = text.replace("enabled: false", "enabled: true")
    text = text.replace('    schedule: "0 3 * * *"\n', "")
    apply(write(tmp_path, text))

    assert backup_schedules() == {"web": "30 * * * *", "api": "30 * * * *"}
    first = Schedule.objects.get(func=BACKUP_TASK, args=repr(Source.objects.get(name="web").pk))
    assert first.next_run is not None and first.next_run.minute == 30


def fleet_of(count: int, prefix: str) -> str:
    lines = ["version: 1", "policies:", "  hourly: {schedule: '0 * * * *', keep_last: 3}"]
    lines += ["sources:"]
    for number in range(count):
        lines += [
            f"  {prefix}-{number}:",
            "    kind: kubernetes",
            f"    location: prod/{prefix}-{number}:/data",
            "    policy: hourly",
            "    owner: ops",
        ]
    return "\n".join(lines) + "\n"


def test_the_number_of_queries_does_not_grow_with_the_number_of_sources(tmp_path):
    with CaptureQueriesContext(connection) as few:
        apply(write(tmp_path, fleet_of(10, "few"), "few.yaml"))
    Source.objects.all().delete()
    Schedule.objects.filter(func=BACKUP_TASK).delete()
    with CaptureQueriesContext(connection) as many:
        apply(write(tmp_path, fleet_of(300, "many"), "many.yaml"))
    with CaptureQueriesContext(connection) as again:
        apply(write(tmp_path, fleet_of(300, "many"), "many.yaml"))

    assert Source.objects.count() == 300 and len(backup_schedules()) == 300
    # Fifteen statements whatever the size: read the policies and the sources; insert the
    # policies and read their ids; insert the sources; sync the schedules (read them and the
    # sources, insert, check housekeeping's: two); insert the audit events; four savepoints.
    # SQLite caps a statement at 999 parameters, so there the bulk inserts of sources,
    # schedules and audit events are cut into batches of about 80 rows: 300 rows add at
    # most 3 statements to each of the three.
    extra_batches = 3 * 3 if connection.vendor == "sqlite" else 0
    assert len(few) <= 15
    assert len(many) <= len(few) + extra_batches
    # Nothing to do: read the policies and the sources, write nothing.
    assert len(again) == 2


def test_the_audit_log_records_the_apply_and_each_changed_object(tmp_path, folders):
    path = write(tmp_path, fleet_text(folders))
    apply(path)
    changed = fleet_text(folders).replace("rpo: 1h", "rpo: 2h").split("  api:")[0]
    changed_path = write(tmp_path, changed, "changed.yaml")

    apply(changed_path, "--prune")

    digest = hashlib.sha256(changed_path.read_bytes()).hexdigest()
    applies = AuditEvent.objects.filter(action="fleet.apply").order_by("id")
    assert applies.count() == 2
    event = applies.last()
    assert event.actor_name == "system" and event.outcome == "succeeded"
    assert event.detail["sha256"] == digest
    assert event.detail["file"] == str(changed_path)
    assert event.detail["counts"]["changed"] == {"storages": 0, "policies": 1, "sources": 0}
    assert event.detail["counts"]["removed"] == {"storages": 0, "policies": 0, "sources": 2}
    change = AuditEvent.objects.get(action="policy.change")
    assert change.object_repr == "hourly"
    assert change.detail["changes"] == {"rpo_s": [3600, 7200]}
    deleted = AuditEvent.objects.filter(action="source.delete")
    assert sorted(deleted.values_list("object_repr", flat=True)) == ["api", "app-db"]
    created = AuditEvent.objects.get(action="source.create", object_repr="web")
    assert created.source == Source.objects.get(name="web")
    assert created.detail["changes"]["policy"] == [None, "hourly"]
    assert created.detail["changes"]["location"] == [None, str(folders["web"])]


def test_json_output_lists_the_changes_in_the_files_form(tmp_path, folders):
    apply(write(tmp_path, fleet_text(folders)))
    changed = fleet_text(folders).replace("rpo: 1h", "rpo: 2h")

    report = json.loads(apply(write(tmp_path, changed), "--json"))

    assert report["changed"] is True and report["dry_run"] is False
    assert report["changes"] == [
        {"op": "~", "type": "policy", "name": "hourly", "changes": {"rpo": ["1h", "2h"]}}
    ]
    assert report["counts"]["changed"] == {"storages": 0, "policies": 1, "sources": 0}


def test_apply_as_a_process_reads_standard_input_and_exits_2_on_bad_input(tmp_path, folders):
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    env.pop("DJANGO_SETTINGS_MODULE", None)

    def manage(*args, text=None):
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            input=text,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert manage("migrate", "-v0").returncode == 0
    bad = manage("apply", "-", text=fleet_text(folders).replace("owner:", "ownr:"))
    assert bad.returncode == 2
    line = fleet_text(folders).splitlines().index("    owner: alice") + 1
    assert bad.stderr.startswith(f"error: <stdin>:{line}: source 'web': unknown field 'ownr'")
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stdout == ""

    good = manage("apply", "-", text=fleet_text(folders))
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[-1] == "Applied <stdin>: 6 created, 0 changed, 0 removed."

    exported = manage("export")
    assert exported.returncode == 0
    again = manage("apply", "-", text=exported.stdout)
    assert again.stdout == "No changes: the catalog already matches <stdin>.\n"
