"""Air-gapped import: a local folder becomes a version with a deterministic commit sha and manifest.

The sha is a sha1 over the sorted (path, git oid) list, so the same files always give the same version
(re-importing a carried-in disk is a no-op), and different files never collide.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from huggingface_hub.utils import filter_repo_objects

from fleet.hub import store
from fleet.hub.catalog import CatalogError, find_version, register_version
from fleet.hub.entries import FileEntry
from fleet.hub.models import ModelVersion, SourceKind

LFS_SIZE = 10 * 1024 * 1024  # the Hub stores files this big (and binary weights of any size) with LFS
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx", ".model", ".tiktoken",
                ".ckpt", ".npz", ".npy", ".pkl")
SKIP = [".git/*", ".cache/*", "*/.cache/*", ".DS_Store", "*.lock"]


def scan(folder: Path, allow_patterns: list[str] | None = None) -> list[tuple[str, Path]]:
    """(repo path, file) pairs to import. A symbolic link is followed only to a file inside ``folder``: one
    that leads out of it is refused (an import must not read /etc/shadow because a link said so)."""
    if not folder.is_dir():
        raise CatalogError("path", f"{folder} is not a folder")
    root = folder.resolve()
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    raise CatalogError("path", f"{rel} is a link to {target}, outside {folder}; copy the files "
                                               "into the folder (cp -rL) and import that copy")
                if not target.is_file():
                    continue
                path = target
            files[rel] = path
    kept = filter_repo_objects(sorted(files), allow_patterns=allow_patterns or None, ignore_patterns=SKIP)
    return [(rel, files[rel]) for rel in kept]


def entry_for(rel: str, path: Path) -> FileEntry:
    sha256, sha1, size = store.hash_file(path)
    if size >= LFS_SIZE or rel.endswith(LFS_SUFFIXES):
        return FileEntry(path=rel, size=size, oid=store.lfs_pointer_oid(sha256, size), lfs_sha256=sha256)
    return FileEntry(path=rel, size=size, oid=sha1)


def commit_sha(entries: list[FileEntry]) -> str:
    digest = hashlib.sha1(b"fleet-import-v1\n")
    for entry in sorted(entries, key=lambda e: e.path):
        digest.update(f"{entry.path}\0{entry.oid}\n".encode())
    return digest.hexdigest()


def import_folder(actor: Any, folder: Path, repo_id: str, revision: str,
                  allow_patterns: list[str] | None = None) -> tuple[ModelVersion, bool]:
    """(version, created). Copies the files into the store, then registers the version in one transaction."""
    if not store.valid_repo_id(repo_id):
        raise CatalogError("repo", "--repo must look like ORG/NAME (letters, digits, '.', '_' or '-')")
    if not revision or len(revision) > 255 or "/" in revision or revision.strip() != revision:
        raise CatalogError("revision", "--revision must be a name such as main or v1 (no '/' or spaces)")
    files = scan(folder, allow_patterns)
    entries = [entry_for(rel, path) for rel, path in files]
    if not entries:
        raise CatalogError("path", f"{folder} has no files to import (after the filters)")
    sha = commit_sha(entries)
    existing = find_version(repo_id, sha)
    if existing is not None:
        return existing, False
    store.check_free_space(sum(entry.size for entry in entries))
    for entry, (_, path) in zip(entries, files, strict=True):
        store.install_file(path, entry.digest)
    version = register_version(actor, repo_id=repo_id, revision=revision, sha=sha, entries=entries,
                               source=SourceKind.IMPORT, allow_patterns=allow_patterns or [],
                               present={entry.digest: True for entry in entries})
    return version, True
