"""The manifest a backup hands to its catalog: the plaintext it wrote, readable without a key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyrage import x25519

from backups.engine.backup import BackupRequest, run_backup
from backups.engine.crypto import load_identities
from backups.engine.errors import NoMatchingIdentityError
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import ManifestReader, load_manifest, open_manifest


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / os.fsdecode(b"sub/caf\xe9")).write_bytes(b"not UTF-8 name")
    return root


def keys(tmp_path) -> tuple[str, Path]:
    identity = x25519.Identity.generate()
    path = tmp_path / "key.txt"
    path.write_text(f"{identity}\n")
    path.chmod(0o600)
    return str(identity.to_public()), path


def test_an_encrypted_backup_hands_its_catalog_the_plaintext_it_wrote(tree, tmp_path):
    recipient, key = keys(tmp_path)
    handed: list = []

    def catalog(manifest: ManifestReader) -> None:
        # Read twice, as the catalog's two passes do, while the backup is still open.
        handed.append((manifest.header, list(manifest.entries()), list(manifest.entries())))

    result = run_backup(
        BackupRequest(
            kind="directory",
            location=str(tree),
            dest_dir=tmp_path / "out",
            stem="20260101T000000Z-1",
            recipients=[recipient],
            catalog=catalog,
        ),
        RecordingHooks(),
    )
    [(header, first, second)] = handed
    assert first == second
    written = load_manifest(result.manifest, identities=load_identities([key]))
    assert first == written.entries
    assert header == written.header
    assert header["encryption"]["recipients"] == [recipient]
    assert b"sub/caf\xe9" in {os.fsencode(entry.path) for entry in first}
    # The file itself stays closed to a host without the key.
    with pytest.raises(NoMatchingIdentityError):
        open_manifest(result.manifest)
