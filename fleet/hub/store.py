"""The content store under FLEET_HUB_ROOT: blob paths, hashing, free-space checks, token encryption.

Layout: ``blobs/sha256/<2>/<64 hex>`` for LFS files, ``blobs/sha1/<2>/<40 hex>`` (git blob sha1) for the
small ones; a download in progress is ``<digest>.partial`` next to it and is renamed when verified.
"""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import re
import shutil
from pathlib import Path

from django.conf import settings

from fleet.lib.errors import FieldError
from fleet.lib.units import format_bytes

DIGEST = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
SHA = re.compile(r"^[0-9a-f]{40}$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
CHUNK = 1024 * 1024


class StoreError(Exception):
    pass


def root() -> Path:
    return Path(settings.FLEET_HUB_ROOT)


def relative_blob_path(digest: str) -> str:
    if not DIGEST.match(digest):
        raise StoreError(f"not a blob digest: {digest!r}")
    kind = "sha256" if len(digest) == 64 else "sha1"
    return f"{kind}/{digest[:2]}/{digest}"


def blob_path(digest: str) -> Path:
    return root() / "blobs" / relative_blob_path(digest)


def partial_path(digest: str) -> Path:
    path = blob_path(digest)
    return path.with_name(path.name + ".partial")


def valid_repo_path(path: str) -> bool:
    """A file path inside a repo: relative, normalised, no '..', no backslashes or control characters."""
    if not path or len(path) > 1000 or path.startswith("/") or "\\" in path:
        return False
    if any(ord(ch) < 32 for ch in path):
        return False
    if posixpath.normpath(path) != path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def valid_repo_id(repo_id: str) -> bool:
    return bool(REPO_ID.match(repo_id or "")) and ".." not in repo_id


# ---- hashing --------------------------------------------------------------------------------------


class Hasher:
    """sha256 and git blob sha1 of one stream, fed in chunks."""

    def __init__(self, size: int):
        self.sha256 = hashlib.sha256()
        self.sha1 = hashlib.sha1()
        self.sha1.update(b"blob %d\0" % size)

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.sha1.update(chunk)


def hash_file(path: Path) -> tuple[str, str, int]:
    """(sha256, git blob sha1, size) of a file, read in 1 MiB chunks."""
    size = path.stat().st_size
    hasher = Hasher(size)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
    return hasher.sha256.hexdigest(), hasher.sha1.hexdigest(), size


def digest_of(path: Path, digest: str) -> str:
    """The digest of ``path`` in the algorithm of ``digest`` (sha256 for 64 hex, git sha1 for 40)."""
    sha256, sha1, _ = hash_file(path)
    return sha256 if len(digest) == 64 else sha1


def lfs_pointer_oid(sha256: str, size: int) -> str:
    """The git blob sha1 of the LFS pointer file that stands for an LFS file in git."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


# ---- disk -----------------------------------------------------------------------------------------


def free_bytes() -> int:
    path = root()
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


def check_free_space(needed: int) -> None:
    """Refuse before downloading when ``needed`` bytes plus FLEET_HUB_DISK_MARGIN do not fit."""
    free = free_bytes()
    margin = settings.FLEET_HUB_DISK_MARGIN
    if needed + margin > free:
        raise StoreError(
            f"not enough disk space under {root()}: needs {format_bytes(needed)} plus a "
            f"{format_bytes(margin)} margin (FLEET_HUB_DISK_MARGIN), {format_bytes(free)} free"
        )


def remove_blob_files(digest: str) -> None:
    for path in (blob_path(digest), partial_path(digest)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def install_file(source: Path, digest: str) -> Path:
    """Copy ``source`` into the store as blob ``digest`` (atomically); returns the stored path."""
    final = blob_path(digest)
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.import-{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, final)
    return final


# ---- upstream tokens, encrypted at rest ---------------------------------------------------------------


class TokenKeyError(FieldError):
    """A stored upstream token that no configured key decrypts."""


def _fernet_for(secret: str):
    from cryptography.fernet import Fernet

    key = hashlib.sha256(b"fleet.hub.token:" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def _fernet():
    """Encrypts with FLEET_HUB_TOKEN_KEY (else SECRET_KEY); decrypts with it or any FLEET_HUB_TOKEN_OLD_KEYS,
    so a key change loses no stored token (they move to the new key as they are saved again)."""
    from cryptography.fernet import MultiFernet

    current = settings.FLEET_HUB_TOKEN_KEY or settings.SECRET_KEY
    readers = [*settings.FLEET_HUB_TOKEN_OLD_KEYS, settings.SECRET_KEY]  # SECRET_KEY: the key before one was set
    return MultiFernet([_fernet_for(current), *(_fernet_for(old) for old in readers if old != current)])


def encrypt_token(token: str) -> str:
    return _fernet().encrypt(token.encode()).decode() if token else ""


def decrypt_token(ciphertext: str) -> str:
    """The plaintext token ("" when none is stored). Raises TokenKeyError when no configured key opens it."""
    if not ciphertext:
        return ""
    from cryptography.fernet import InvalidToken

    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise TokenKeyError(
            "token", "the stored upstream token cannot be decrypted with FLEET_HUB_TOKEN_KEY (or SECRET_KEY) nor any "
                     "key in FLEET_HUB_TOKEN_OLD_KEYS: put the key it was saved with in FLEET_HUB_TOKEN_OLD_KEYS, "
                     "or enter the token again") from None
