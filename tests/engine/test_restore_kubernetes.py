"""Restoring into a pod: verified first, then the filtered tar stream into `kubectl exec`."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from backups.engine.errors import ArchiveError, Cancelled, EngineError, TargetError
from backups.engine.hooks import RecordingHooks
from backups.engine.restore import RestoreRequest, check_target, restore_archive
from tests.engine.restore_helpers import (
    CancelWhilePublishing,
    archive_of,
    hostile_tar,
    make_tree,
    snapshot,
    write_archive,
)

FAKE_KUBECTL = Path(__file__).parent / "fake_kubectl"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """A stand-in cluster: pod prod/api-0 is the folder cluster/prod/api-0."""
    root = tmp_path / "cluster"
    (root / "prod" / "api-0" / "var" / "data").mkdir(parents=True)
    (root / "prod" / "api-0" / ".containers").write_text("app sidecar\n")
    monkeypatch.setenv("PATH", f"{FAKE_KUBECTL}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_ROOT", str(root))
    monkeypatch.delenv("KUBECTL", raising=False)
    return root


def request_for(backup, target, **options):
    # The archives here are made from local folders standing for pod prod/api-0's data.
    options.setdefault("source_location", "prod/api-0/app:/var/data")
    return RestoreRequest(
        archive=backup.archive,
        manifest=backup.manifest,
        kind="kubernetes",
        target=target,
        **options,
    )


def test_restore_into_a_pod_path_writes_the_tree(cluster, tmp_path):
    source = make_tree(tmp_path / "source")
    backup = archive_of(source, tmp_path / "archives", kind="kubernetes")
    hooks = RecordingHooks()

    result = restore_archive(request_for(backup, "prod/api-0/app:/var/data"), hooks)

    pod_data = cluster / "prod" / "api-0" / "var" / "data"
    assert snapshot(pod_data) == snapshot(source)
    assert result.target == "prod/api-0/app:/var/data"
    assert [check["name"] for check in result.checks] == ["checksum", "contents"]
    assert hooks.last.bytes_done == hooks.last.bytes_total


def test_restore_of_some_paths_into_a_pod(cluster, tmp_path):
    source = make_tree(tmp_path / "source")
    backup = archive_of(source, tmp_path / "archives", kind="kubernetes")

    restore_archive(
        request_for(backup, "prod/api-0:/var/data", paths=["docs/nested"]), RecordingHooks()
    )

    pod_data = cluster / "prod" / "api-0" / "var" / "data"
    assert sorted(os.listdir(pod_data)) == ["docs"]
    assert (pod_data / "docs/nested/deeper/leaf.txt").read_text() == "leaf\n" * 100


def test_a_damaged_archive_sends_nothing_to_the_pod(cluster, tmp_path):
    source = make_tree(tmp_path / "source")
    backup = archive_of(source, tmp_path / "archives", kind="kubernetes")
    data = bytearray(backup.archive.read_bytes())
    data[-200] ^= 0xFF
    backup.archive.write_bytes(bytes(data))

    with pytest.raises(ArchiveError, match="damaged"):
        restore_archive(request_for(backup, "prod/api-0:/var/data"), RecordingHooks())

    assert os.listdir(cluster / "prod" / "api-0" / "var" / "data") == []


def test_hostile_members_never_reach_the_pod(cluster, tmp_path):
    outside = cluster / "prod" / "api-0" / "etc"
    outside.mkdir()

    def build(add):
        add("./fine.txt", data=b"fine\n")
        add("../../etc/evil.txt", data=b"evil\n")
        add("/etc/abs.txt", data=b"abs\n")
        add("./link", tarfile.SYMTYPE, linkname="/etc")
        add("./link/through.txt", data=b"through\n")

    backup = write_archive(tmp_path / "archives", hostile_tar(build), kind="kubernetes")

    result = restore_archive(request_for(backup, "prod/api-0:/var/data"), RecordingHooks())

    pod_data = cluster / "prod" / "api-0" / "var" / "data"
    assert sorted(os.listdir(pod_data)) == ["fine.txt", "link"]
    assert os.listdir(outside) == []
    assert len(result.warnings) == 3


def test_a_missing_pod_reports_kubectl_s_own_words(cluster, tmp_path):
    source = make_tree(tmp_path / "source")
    backup = archive_of(source, tmp_path / "archives", kind="kubernetes")

    with pytest.raises(EngineError, match=r'pods "api-9" not found'):
        restore_archive(request_for(backup, "prod/api-9:/var/data"), RecordingHooks())


def test_a_missing_container_reports_kubectl_s_own_words(cluster, tmp_path):
    source = make_tree(tmp_path / "source")
    backup = archive_of(source, tmp_path / "archives", kind="kubernetes")

    with pytest.raises(EngineError, match="container not found"):
        restore_archive(request_for(backup, "prod/api-0/nope:/var/data"), RecordingHooks())


def test_a_malformed_pod_location_is_refused_up_front(cluster, tmp_path):
    source = make_tree(tmp_path / "source")
    backup = archive_of(source, tmp_path / "archives", kind="kubernetes")

    with pytest.raises(TargetError, match="NAMESPACE/POD"):
        check_target(request_for(backup, "api-0:relative/path"))


def test_a_pod_backup_can_be_restored_to_a_local_folder(cluster, tmp_path):
    source = make_tree(tmp_path / "source")
    backup = archive_of(source, tmp_path / "archives", kind="kubernetes")

    restore_archive(request_for(backup, str(tmp_path / "local")), RecordingHooks())

    assert snapshot(tmp_path / "local") == snapshot(source)


def test_a_hung_kubectl_is_stopped_by_the_timeout(cluster, tmp_path, monkeypatch):
    source = make_tree(tmp_path / "source")
    (source / "large.bin").write_bytes(os.urandom(6 << 20))
    backup = archive_of(source, tmp_path / "archives", kind="kubernetes")
    # A kubectl stuck on a dead connection: it never reads what it is sent.
    stuck = tmp_path / "stuck-bin"
    stuck.mkdir()
    (stuck / "kubectl").write_text("#!/bin/sh\nexec sleep 600\n")
    (stuck / "kubectl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stuck}:{os.environ['PATH']}")

    with pytest.raises(Cancelled, match="timed out.*may hold part of the archive"):
        restore_archive(
            request_for(backup, "prod/api-0:/var/data", timeout_s=1.5), RecordingHooks()
        )


def test_a_cancel_while_sending_to_a_pod_says_the_pod_may_hold_part(cluster, tmp_path):
    source = make_tree(tmp_path / "source")
    (source / "large.bin").write_bytes(os.urandom(4 << 20))
    backup = archive_of(source, tmp_path / "archives", kind="kubernetes")

    with pytest.raises(Cancelled, match="stopped there: prod/api-0:/var/data may hold part"):
        restore_archive(request_for(backup, "prod/api-0:/var/data"), CancelWhilePublishing())
