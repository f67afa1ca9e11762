"""Storages in the fleet file (version 2): declared, named by policies, never moved or
deleted under the archives they hold; a version 1 file leaves them as they are."""

from __future__ import annotations

import textwrap

import pytest

from backups.engine.fleetfile import load_fleet
from backups.models import AuditEvent, Copy, Policy, Run, Storage
from backups.services.catalog import policy_create, source_create
from backups.services.storages import storage_create
from tests.cli_helpers import call_json, quiet
from tests.test_cli_apply import apply, apply_refused, write

pytestmark = pytest.mark.django_db


@pytest.fixture
def places(tmp_path):
    """Two folders apart from ARCHIVE_ROOT for local storages."""
    paths = {name: tmp_path / "mnt" / name for name in ("nas", "cold")}
    for path in paths.values():
        path.mkdir(parents=True)
    return paths


def fleet(places, *, policy: str = "", storages: str = "") -> str:
    storages = (
        storages
        or f"""\
        nas: {{kind: local, path: {places["nas"]}, keep_monthly: 12}}
        cold: {{kind: local, path: {places["cold"]}}}
        offsite:
          kind: s3
          url: s3://acme-backups/site-a/
          endpoint: https://s3.example.net
          region: eu-west-1
          credentials_env: BACKUP_S3
    """
    )
    policy = (
        policy
        or """\
        storage: nas
        copy_to: [offsite]
        archive_to: cold
        archive_after: 90d
    """
    )
    return (
        "version: 2\nstorages:\n"
        + textwrap.indent(textwrap.dedent(storages), "  ")
        + "policies:\n  hourly:\n    schedule: '0 * * * *'\n    keep_last: 3\n"
        + textwrap.indent(textwrap.dedent(policy), "    ")
    )


def copy_names(policy: Policy) -> list[str]:
    return sorted(policy.copy_to.values_list("name", flat=True))


def test_apply_creates_the_storages_and_the_policy_naming_them(tmp_path, places):
    output = apply(write(tmp_path, fleet(places)))

    assert f"+ storage nas (local {places['nas']})" in output
    assert "+ storage offsite (s3 s3://acme-backups/site-a)" in output
    offsite = Storage.objects.get(name="offsite")
    assert (offsite.bucket, offsite.prefix, offsite.endpoint) == (
        "acme-backups",
        "site-a",
        "https://s3.example.net",
    )
    assert (offsite.region, offsite.credentials_env) == ("eu-west-1", "BACKUP_S3")
    assert Storage.objects.get(name="nas").keep_monthly == 12
    hourly = Policy.objects.get(name="hourly")
    assert (hourly.storage.name, hourly.archive_to.name) == ("nas", "cold")
    assert (copy_names(hourly), hourly.archive_after_s) == (["offsite"], 90 * 86400)
    assert "No changes" in apply(write(tmp_path, fleet(places)))


def test_export_writes_the_storages_and_applying_it_changes_nothing(tmp_path, places):
    apply(write(tmp_path, fleet(places)))
    exported = tmp_path / "exported.yaml"
    quiet("export", str(exported))

    parsed = load_fleet(exported.read_bytes(), "exported.yaml")

    assert list(parsed.storages) == ["cold", "nas", "offsite"]
    assert parsed.storages["offsite"].values["url"] == "s3://acme-backups/site-a"
    hourly = parsed.policies["hourly"].values
    assert (hourly["storage"], hourly["copy_to"], hourly["archive_to"]) == (
        "nas",
        ("offsite",),
        "cold",
    )
    assert "No changes" in apply(exported, "--prune")


def test_a_policy_moves_between_storages_and_back_to_archive_root(tmp_path, places):
    apply(write(tmp_path, fleet(places)))
    moved = fleet(places, policy="storage: offsite\ncopy_to: [nas, cold]\n")

    output = apply(write(tmp_path, moved, "moved.yaml"))

    assert "~ policy hourly: storage nas -> offsite, copy_to " in output
    hourly = Policy.objects.get(name="hourly")
    assert (hourly.storage.name, copy_names(hourly), hourly.archive_to) == (
        "offsite",
        ["cold", "nas"],
        None,
    )
    home = apply(write(tmp_path, fleet(places, policy="storage: default\n"), "home.yaml"))
    assert "storage offsite -> default" in home
    hourly.refresh_from_db()
    assert (hourly.storage, copy_names(hourly)) == (None, [])


def test_a_version_1_file_leaves_a_policys_storages_as_they_are(tmp_path, places):
    nas = storage_create(name="nas", kind="local", path=str(places["nas"]))
    offsite = storage_create(name="offsite", kind="local", path=str(places["cold"]))
    policy = policy_create(name="hourly", schedule="0 * * * *", keep_last=3, storage=nas)
    policy.copy_to.set([offsite])
    old_file = "version: 1\npolicies:\n  hourly: {schedule: '0 * * * *', keep_last: 5}\n"

    output = apply(write(tmp_path, old_file), "--prune")

    assert output.splitlines()[0] == "~ policy hourly: keep_last 3 -> 5"
    policy.refresh_from_db()
    assert (policy.storage, copy_names(policy)) == (nas, ["offsite"])
    assert Storage.objects.count() == 2


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            "version: 1\npolicies:\n  p: {storage: nas}\n",
            ":3: policy 'p': storage needs `version: 2` at the top of the file",
        ),
        ("version: 1\nstorages: {}\n", ":2: storages needs `version: 2`"),
        (
            "version: 2\nstorages:\n  s3: {kind: s3, url: 'http://x'}\n",
            ":3: storage 's3': url: 'http://x' is not an S3 URL",
        ),
        (
            "version: 2\npolicies:\n  p: {copy_to: [nas, nas]}\n",
            ":3: policy 'p': copy_to: 'nas' is named twice",
        ),
    ],
)
def test_a_malformed_storage_field_is_refused_with_its_line(tmp_path, text, fragment):
    assert fragment in apply_refused(write(tmp_path, text))


@pytest.mark.parametrize(
    "policy, fragment",
    [
        ("storage: tape\n", "storage: unknown storage 'tape'; declare it under storages."),
        ("copy_to: [default]\n", "copy_to: 'default' (ARCHIVE_ROOT) is where backups are"),
        ("storage: nas\ncopy_to: [nas]\n", "copy_to: A backup cannot be copied to the storage"),
        ("archive_to: cold\n", "archive_to: Give both an archive storage and an age"),
        ("storage: cold\narchive_to: cold\narchive_after: 30d\n", "The archive storage must"),
    ],
)
def test_a_policy_naming_storages_wrongly_is_refused_and_nothing_is_written(
    tmp_path, places, policy, fragment
):
    message = apply_refused(write(tmp_path, fleet(places, policy=policy)))

    assert fragment in message and "policy 'hourly'" in message
    assert not Storage.objects.exists() and not Policy.objects.exists()


def test_a_storage_without_the_file_section_is_named_from_the_catalog(tmp_path, places):
    storage_create(name="nas", kind="local", path=str(places["nas"]))
    text = "version: 2\npolicies:\n  p: {storage: nas}\n  q: {storage: tape}\n"

    message = apply_refused(write(tmp_path, text))

    assert "policy 'q': storage: unknown storage 'tape'; add it with `storage add` first" in message
    apply(write(tmp_path, "version: 2\npolicies:\n  p: {storage: nas}\n"))
    assert Policy.objects.get(name="p").storage.name == "nas"


def test_bad_storages_are_refused_with_the_models_sentence(tmp_path, places, settings):
    inside = fleet(places, storages=f"nas: {{kind: local, path: {settings.ARCHIVE_ROOT}/x}}\n")
    no_url = fleet(places, storages="offsite: {kind: s3}\n", policy="storage: offsite\n")

    assert "storage 'nas': path: " in apply_refused(write(tmp_path, inside))
    assert "is ARCHIVE_ROOT" in apply_refused(write(tmp_path, inside))
    assert "an S3 storage needs url: s3://BUCKET." in apply_refused(write(tmp_path, no_url))
    assert not Storage.objects.exists()


# A backup run inline ends with the database connection closed: the tests using one need
# real transactions.
with_backups = pytest.mark.django_db(transaction=True)


@pytest.fixture
def backed_up(tmp_path, places, data_dir):
    """The fleet applied, and one backup written to the storage `nas`."""
    apply(write(tmp_path, fleet(places, policy="storage: nas\n")))
    source_create(
        name="files",
        kind="directory",
        location=str(data_dir),
        policy=Policy.objects.get(name="hourly"),
    )
    run = call_json("backup", "files", "--inline")
    assert Run.objects.get(pk=run["id"]).storage.name == "nas"
    return run


@with_backups
def test_a_storage_holding_archives_is_never_moved(tmp_path, places, backed_up):
    moved = fleet(places, policy="storage: nas\n").replace(str(places["nas"]), "/mnt/elsewhere")
    before = {storage.name: storage.location for storage in Storage.objects.all()}

    message = apply_refused(write(tmp_path, moved, "moved.yaml"))

    assert f"storage 'nas': path: Storage 'nas' holds 1 archive(s) at {places['nas']}" in message
    assert before == {storage.name: storage.location for storage in Storage.objects.all()}
    # Where it is reached from may change: an endpoint, the keep rules.
    rules = fleet(places, policy="storage: nas\n").replace("keep_monthly: 12", "keep_daily: 7")
    assert "~ storage nas: keep_daily 0 -> 7, keep_monthly 12 -> 0" in apply(
        write(tmp_path, rules, "rules.yaml")
    )


def test_an_empty_storage_may_move(tmp_path, places):
    apply(write(tmp_path, fleet(places)))
    elsewhere = places["cold"].parent / "colder"
    moved = fleet(places).replace(str(places["cold"]), str(elsewhere))

    assert f"~ storage cold: path {places['cold']} -> {elsewhere}" in apply(
        write(tmp_path, moved, "moved.yaml")
    )
    assert Storage.objects.get(name="cold").path == str(elsewhere)


@with_backups
def test_prune_deletes_only_an_unused_empty_storage(tmp_path, places, backed_up):
    without_cold = fleet(places, policy="storage: nas\n").replace(
        f"  cold: {{kind: local, path: {places['cold']}}}\n", ""
    )
    assert "cold" not in without_cold

    output = apply(write(tmp_path, without_cold, "fewer.yaml"), "--prune")

    assert "- storage cold" in output
    assert set(Storage.objects.values_list("name", flat=True)) == {"nas", "offsite"}
    offsite_only = "offsite: {kind: s3, url: 's3://other-bucket'}\n"
    only_offsite = fleet(places, storages=offsite_only, policy="\n")
    message = apply_refused(write(tmp_path, only_offsite, "none.yaml"), "--prune")
    assert "storage 'nas' is not in the file but 1 backup(s), copies or runs" in message
    assert set(Storage.objects.values_list("name", flat=True)) == {"nas", "offsite"}
    assert Policy.objects.get(name="hourly").storage.name == "nas"


def test_prune_keeps_a_storage_a_policy_outside_the_file_names(tmp_path, places):
    nas = storage_create(name="nas", kind="local", path=str(places["nas"]))
    policy_create(name="by-hand", schedule="", keep_last=1, storage=nas)

    output = apply(write(tmp_path, "version: 2\nstorages: {}\n"), "--prune")

    assert "! storage nas is kept: policy(ies) outside the file still name it (by-hand)" in output
    assert Storage.objects.filter(name="nas").exists()


def test_a_dry_run_with_storages_writes_nothing(tmp_path, places):
    output = apply(write(tmp_path, fleet(places)), "--dry-run")

    assert "+ storage offsite" in output and "nothing was changed" in output
    assert not Storage.objects.exists() and not Policy.objects.exists()


def test_the_audit_log_records_each_storage_the_apply_changes(tmp_path, places):
    apply(write(tmp_path, fleet(places)))

    created = AuditEvent.objects.filter(action="storage.create")
    assert sorted(created.values_list("object_repr", flat=True)) == ["cold", "nas", "offsite"]
    offsite = created.get(object_repr="offsite")
    assert offsite.detail["changes"]["url"] == [None, "s3://acme-backups/site-a"]
    assert offsite.object_id == str(Storage.objects.get(name="offsite").pk)


@with_backups
def test_the_admin_refuses_to_move_a_storage_holding_archives(
    client, admin_user, places, backed_up
):
    nas = Storage.objects.get(name="nas")
    client.force_login(admin_user)
    form = {
        "name": "nas",
        "kind": "local",
        "path": "/mnt/elsewhere",
        **{f"keep_{rule}": 0 for rule in ("last", "hourly", "daily", "weekly", "yearly")},
        "keep_monthly": 12,
    }

    page = client.post(f"/admin/backups/storage/{nas.pk}/change/", form)

    assert page.status_code == 200 and "holds 1 archive(s)" in page.content.decode()
    nas.refresh_from_db()
    assert nas.path == str(places["nas"])


def test_the_admin_refuses_a_policy_copying_to_its_own_storage(client, admin_user, places):
    nas = storage_create(name="nas", kind="local", path=str(places["nas"]))
    client.force_login(admin_user)
    form = {
        "name": "p",
        "compression": "zstd",
        "storage": nas.pk,
        "copy_to": [nas.pk],
        "check_queries": "[]",
        **{f"keep_{rule}": 0 for rule in ("last", "hourly", "daily", "weekly", "monthly")},
        "keep_yearly": 0,
    }

    page = client.post("/admin/backups/policy/add/", form)

    assert "cannot be copied to the storage it is written to" in page.content.decode()
    assert not Policy.objects.exists()


@with_backups
def test_a_copy_record_counts_as_an_archive_held(tmp_path, places, backed_up):
    offsite = Storage.objects.get(name="offsite")
    Copy.objects.create(backup_id=backed_up["id"], storage=offsite, status=Copy.Status.FAILED)
    moved = fleet(places, policy="storage: nas\n").replace(
        "s3://acme-backups/site-a/", "s3://other-bucket"
    )

    message = apply_refused(write(tmp_path, moved, "moved.yaml"))

    assert "storage 'offsite': url: Storage 'offsite' holds 1 archive(s)" in message


@pytest.mark.parametrize(
    "storage, fragment",
    [
        ("{kind: s3, url: 's3://acme/../../etc'}", "url: The prefix '../../etc' is not valid"),
        ("{kind: s3, url: 's3://acme/a?x=1'}", "url: 's3://acme/a?x=1' is not an S3 URL"),
        ("{kind: s3, url: 's3://a'}", "url: The bucket name 'a' is not valid"),
        ("{kind: s3, url: 's3://acme', credentials_env: 'X;sh'}", "credentials_env: 'X;sh' is"),
        ("{kind: s3, url: 's3://acme', path: /srv}", "path: An S3 storage takes a bucket"),
        ("{kind: local, path: 'relative/dir'}", "path: Give the folder as an absolute path."),
        ("{kind: local, path: /}", "path: / is ARCHIVE_ROOT"),
        ("{kind: local, path: /srv, url: 's3://acme'}", "kind: A local storage takes only"),
        ("{kind: tape, path: /srv}", "kind: Value 'tape' is not a valid choice"),
    ],
)
def test_a_hostile_storage_in_the_file_is_refused_in_a_sentence(tmp_path, storage, fragment):
    text = f"version: 2\nstorages:\n  s: {storage}\n"

    message = apply_refused(write(tmp_path, text))

    assert f"fleet.yaml:3: storage 's': {fragment}" in message
    assert not Storage.objects.exists()
