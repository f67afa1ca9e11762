#!/bin/sh
# Restore a backup chain with plain tools (sh, tar, zstd, jq, sha256sum), no backup program.
# Usage: restore-chain.sh ARCHIVE_FOLDER POINT_MANIFEST TARGET_FOLDER
# POINT_MANIFEST is the .manifest.json of the backup to restore (a full, a differential or
# an incremental); its chain is found by following each manifest's "base" run id back to
# the full. Every archive of the chain is checked against its .sha256 file first; then,
# oldest first, each manifest's "deleted" paths are removed and its archive extracted.
set -eu
dir=$1
point=$2
target=$3
chain=$point
manifest=$point
while [ "$(jq -r '.level // "full"' "$manifest")" != full ]; do
    manifest=$(ls "$dir"/*-"$(jq -r .base "$manifest")".manifest.json)
    chain="$manifest
$chain"
done
echo "$chain" | while read -r manifest; do
    archive=$(jq -r .archive.name "$manifest")
    (cd "$dir" && sha256sum --check --quiet "$archive.sha256")
done
mkdir -p "$target"
echo "$chain" | while read -r manifest; do
    archive=$(jq -r .archive.name "$manifest")
    jq -j '(.deleted // [])[] | . + "\u0000"' "$manifest" | (cd "$target" && xargs -0r rm -rf --)
    zstd -dc "$dir/$archive" | tar -xf - -C "$target"
done
