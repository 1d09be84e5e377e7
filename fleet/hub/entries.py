"""One file of a model version as upstream (or a folder import) lists it, before any row exists."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    oid: str  # git blob sha1 (of the LFS pointer for LFS files)
    lfs_sha256: str | None = None

    @property
    def digest(self) -> str:
        return self.lfs_sha256 or self.oid
