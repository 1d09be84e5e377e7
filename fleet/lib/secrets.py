"""High-entropy secrets (enrollment tokens, node secrets, API keys) and their at-rest hashes.

These are 256-bit random values, not passwords, so a single SHA-256 is the right hash: it is
indexable (lookup by hash) and brute force over 2**256 is not a concern.
"""

from __future__ import annotations

import hashlib
import secrets


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hint(secret: str) -> str:
    """The last few characters, safe to show in lists so operators can tell secrets apart."""
    return "…" + secret[-4:]
