"""Hub settings read from the environment (called from fleet.settings inside its ConfigError guard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fleet.lib.env import ConfigError, env_bool, env_float, env_int, env_str
from fleet.lib.units import parse_size

DEFAULT_UPSTREAM = "https://huggingface.co"


def _url(name: str, value: str) -> str:
    value = value.rstrip("/")
    parsed = urlparse(value)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise ConfigError(f"{name}={value!r} must be an http:// or https:// URL such as https://huggingface.co")
    return value


def _size(name: str, default: int) -> int:
    raw = env_str(name).strip()
    if not raw:
        return default
    try:
        return parse_size(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={exc}") from None


def hub_settings(var_dir: Path) -> dict[str, Any]:
    accel = env_str("FLEET_HUB_ACCEL_REDIRECT").strip()
    if accel and not accel.startswith("/"):
        raise ConfigError(
            f"FLEET_HUB_ACCEL_REDIRECT={accel!r} must be an nginx internal location such as /_fleet_blobs/")
    blob_url = env_str("FLEET_BLOB_URL").strip()
    if not env_bool("FLEET_BLOB_SERVER", True) and not accel:
        raise ConfigError("FLEET_BLOB_SERVER=0 needs FLEET_HUB_ACCEL_REDIRECT (an nginx internal location): "
                          "otherwise nothing serves model files to nodes")
    return {
        "FLEET_HUB_ROOT": Path(env_str("FLEET_HUB_ROOT", str(var_dir / "hub"))),
        "FLEET_HF_UPSTREAM": _url("FLEET_HF_UPSTREAM", env_str("FLEET_HF_UPSTREAM", DEFAULT_UPSTREAM)),
        "FLEET_HF_TOKEN": env_str("FLEET_HF_TOKEN").strip(),
        "FLEET_HF_OFFLINE": env_bool("FLEET_HF_OFFLINE", False),
        "FLEET_HUB_TOKEN_KEY": env_str("FLEET_HUB_TOKEN_KEY").strip(),
        # Earlier FLEET_HUB_TOKEN_KEY values (comma-separated), still accepted for reading stored tokens.
        "FLEET_HUB_TOKEN_OLD_KEYS": [k.strip() for k in env_str("FLEET_HUB_TOKEN_OLD_KEYS").split(",") if k.strip()],
        "FLEET_REQUIRE_APPROVAL": env_bool("FLEET_REQUIRE_APPROVAL", False),
        "FLEET_HUB_ACCEL_REDIRECT": accel.rstrip("/"),
        "FLEET_BLOB_SERVER": env_bool("FLEET_BLOB_SERVER", True),
        "FLEET_BLOB_BIND": env_str("FLEET_BLOB_BIND", "127.0.0.1").strip(),
        "FLEET_BLOB_PORT": env_int("FLEET_BLOB_PORT", 0, minimum=0, maximum=65535),
        "FLEET_BLOB_URL": _url("FLEET_BLOB_URL", blob_url) if blob_url else "",
        "FLEET_BLOB_MAX_CONNECTIONS": env_int("FLEET_BLOB_MAX_CONNECTIONS", 64, minimum=1, maximum=10000),
        "FLEET_BLOB_URL_TTL": env_float("FLEET_BLOB_URL_TTL", 300.0, minimum=5, maximum=86400),
        "FLEET_HUB_RATE_LIMIT": _size("FLEET_HUB_RATE_LIMIT", 0),
        "FLEET_HUB_INLINE_MAX": _size("FLEET_HUB_INLINE_MAX", 1024 * 1024),
        "FLEET_HUB_SYNC_WORKERS": env_int("FLEET_HUB_SYNC_WORKERS", 2, minimum=1, maximum=64),
        # A transient upstream failure is retried after RETRY_BASE, 2x, 4x ... up to RETRY_MAX seconds;
        # after MAX_ATTEMPTS failures the file is marked failed until an operator retries it.
        "FLEET_HUB_SYNC_MAX_ATTEMPTS": env_int("FLEET_HUB_SYNC_MAX_ATTEMPTS", 8, minimum=1, maximum=1000),
        "FLEET_HUB_RETRY_BASE": env_float("FLEET_HUB_RETRY_BASE", 30.0, minimum=0.1, maximum=86400),
        "FLEET_HUB_RETRY_MAX": env_float("FLEET_HUB_RETRY_MAX", 3600.0, minimum=1, maximum=7 * 86400),
        "FLEET_HUB_LEASE": env_float("FLEET_HUB_LEASE", 60.0, minimum=5, maximum=3600),
        "FLEET_HUB_STALL_TIMEOUT": env_float("FLEET_HUB_STALL_TIMEOUT", 60.0, minimum=1, maximum=3600),
        "FLEET_HUB_DISK_MARGIN": _size("FLEET_HUB_DISK_MARGIN", 1024**3),
    }
