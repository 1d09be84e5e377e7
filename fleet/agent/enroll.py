"""Enrollment (one-time token → per-node secret) and secret rotation, over plain HTTP(S) with urllib."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from fleet.agent import AGENT_VERSION
from fleet.agent.state import Credentials, save_credentials

ENROLL_PATH = "/api/agents/enroll"
ROTATE_PATH = "/api/agents/rotate"
TIMEOUT = 30.0


class EnrollError(Exception):
    """The server refused, or could not be reached; ``str()`` is fit to print as is."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field


def validate_server_url(server: str) -> str:
    """The server URL without a trailing slash; raises ValueError naming what is wrong."""
    server = (server or "").strip()
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"server URL {server!r} must start with http:// or https://")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"server URL {server!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"server URL {server!r} has no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"server URL {server!r} must not carry credentials, a query or a fragment")
    return server.rstrip("/")


def _post(url: str, body: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": f"fleet-agent/{AGENT_VERSION}",
    }
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None
    except urllib.error.URLError as exc:
        raise EnrollError(f"cannot reach {url}: {exc.reason}") from None
    except (OSError, TimeoutError) as exc:
        raise EnrollError(f"cannot reach {url}: {exc}") from None
    try:
        data = json.loads(payload)
    except ValueError:
        raise EnrollError(f"{url} answered with something other than JSON; is this a Fleet server?") from None
    if not isinstance(data, dict):
        raise EnrollError(f"{url} answered with unexpected JSON; is this a Fleet server?")
    return data


def _http_error(exc: urllib.error.HTTPError) -> EnrollError:
    try:
        data = json.loads(exc.read() or b"null")
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        field = data.get("field") if isinstance(data.get("field"), str) else None
        return EnrollError(data["error"], status=exc.code, field=field)
    return EnrollError(f"server answered HTTP {exc.code} {exc.reason}".rstrip(), status=exc.code)


def enroll(
    server: str,
    token: str,
    name: str | None = None,
    kind: str | None = None,
    labels: dict[str, str] | None = None,
) -> Credentials:
    """Exchange an enrollment token for this node's credentials (not saved; see ``save_credentials``).

    Without ``name`` the server names the node (from the hostname). Raises ValueError for a bad URL,
    EnrollError otherwise.
    """
    server = validate_server_url(server)
    hostname = socket.gethostname()
    body = {"token": token, "name": name or None, "hostname": hostname, "kind": kind,
            "labels": dict(labels or {})}
    data = _post(server + ENROLL_PATH, body)
    node_id, node_name, secret = data.get("node_id"), data.get("node_name"), data.get("secret")
    if not (isinstance(node_id, int) and isinstance(node_name, str) and isinstance(secret, str) and secret):
        raise EnrollError("the server's enrollment answer lacks node_id, node_name or secret")
    return Credentials(server=server, node_id=node_id, node_name=node_name, secret=secret)


def rotate(creds: Credentials, home: str | os.PathLike[str] | None = None) -> Credentials:
    """Ask the server for a new secret, save it and return the new credentials."""
    data = _post(validate_server_url(creds.server) + ROTATE_PATH, {}, secret=creds.secret)
    secret = data.get("secret")
    if not isinstance(secret, str) or not secret:
        raise EnrollError("the server's rotation answer lacks a secret")
    new = Credentials(server=creds.server, node_id=creds.node_id, node_name=creds.node_name, secret=secret)
    save_credentials(new, home)
    return new
