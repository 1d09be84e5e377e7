"""Static facts about this host, sent in ``hello``."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

import psutil

from fleet.agent.protocol import HostFacts, NodeKindName

OS_RELEASE = Path("/etc/os-release")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


def os_name(os_release: Path = OS_RELEASE) -> str:
    """PRETTY_NAME from os-release, else what ``platform`` says."""
    try:
        for line in os_release.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "PRETTY_NAME" and value.strip():
                return value.strip().strip("\"'")[:512]
    except OSError:
        pass
    return platform.platform()[:512]


def detect_kind(tegra_release: Path = TEGRA_RELEASE) -> NodeKindName | None:
    """``edge_device`` on Jetson (L4T); otherwise None so the server keeps what it has."""
    return "edge_device" if tegra_release.exists() else None


def disk_total(path: str | os.PathLike[str] | None) -> int | None:
    for candidate in (path, "/"):
        if candidate is None:
            continue
        try:
            return int(psutil.disk_usage(os.fspath(candidate)).total)
        except OSError:
            continue
    return None


def collect_host_facts(
    kind: NodeKindName | None = None,
    labels: dict[str, str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> HostFacts:
    return HostFacts(
        hostname=socket.gethostname()[:512] or "unknown",
        os=os_name(),
        arch=platform.machine()[:128],
        cpu_count=psutil.cpu_count(logical=True),
        memory_bytes=int(psutil.virtual_memory().total),
        disk_bytes=disk_total(home),
        kind=kind if kind is not None else detect_kind(),
        labels=dict(labels or {}),
    )
