"""The agent's own files under its home (``FLEET_AGENT_HOME``, default ``~/.fleet-agent``, mode 0700).

``credentials.json`` (0600) holds the node secret; ``status.json`` is what the running agent last
reported about its connection, read by ``fleet-agent status``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOME_ENV = "FLEET_AGENT_HOME"
CREDENTIALS_FILE = "credentials.json"
STATUS_FILE = "status.json"
NOT_ENROLLED = "not enrolled: run fleet-agent enroll --server URL --token T"


class StateError(Exception):
    """A state file is missing or unusable; the message says what to do."""


class NotEnrolledError(StateError):
    pass


@dataclass(frozen=True)
class Credentials:
    server: str
    node_id: int
    node_name: str
    secret: str = field(repr=False)


def agent_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The agent home: ``home`` if given, else ``$FLEET_AGENT_HOME``, else ``~/.fleet-agent``."""
    if home is None:
        home = os.environ.get(HOME_ENV) or Path.home() / ".fleet-agent"
    return Path(home).expanduser()


def ensure_home(home: str | os.PathLike[str] | None = None) -> Path:
    path = agent_home(home)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.chmod(path, 0o700)  # it may have been made by hand with a looser mode; it holds the secret
    except OSError:
        pass
    return path


def write_json_atomic(path: Path, data: dict[str, Any], mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a torn one.

    The temporary file is created with ``mode`` from the start, so the secret is never readable by
    others even for a moment.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # O_CREAT does not change the mode of a leftover tmp file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def credentials_path(home: str | os.PathLike[str] | None = None) -> Path:
    return agent_home(home) / CREDENTIALS_FILE


def save_credentials(creds: Credentials, home: str | os.PathLike[str] | None = None) -> Path:
    path = ensure_home(home) / CREDENTIALS_FILE
    write_json_atomic(path, asdict(creds), mode=0o600)
    return path


def load_credentials(home: str | os.PathLike[str] | None = None) -> Credentials:
    path = credentials_path(home)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotEnrolledError(f"{NOT_ENROLLED} (no {path})") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {path} ({exc}); re-enroll with fleet-agent enroll") from None
    try:
        creds = Credentials(
            server=str(raw["server"]),
            node_id=int(raw["node_id"]),
            node_name=str(raw["node_name"]),
            secret=str(raw["secret"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path} is incomplete ({exc!r}); re-enroll with fleet-agent enroll") from None
    if not creds.secret:
        raise StateError(f"{path} has an empty secret; re-enroll with fleet-agent enroll")
    return creds


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_status(home: str | os.PathLike[str] | None, **fields: Any) -> dict[str, Any]:
    """Write status.json: connected, server, node_id, node_name, since, last_error, pid, updated_at."""
    data = {
        "connected": False,
        "server": None,
        "node_id": None,
        "node_name": None,
        "since": None,
        "last_error": None,
        **fields,
        "pid": os.getpid(),
        "updated_at": now_iso(),
    }
    write_json_atomic(ensure_home(home) / STATUS_FILE, data, mode=0o644)
    return data


def read_status(home: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    try:
        data = json.loads((agent_home(home) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True

