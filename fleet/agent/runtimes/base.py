"""What every runtime adapter provides: whether it can run on this host, and the command line that serves one
model snapshot over OpenAI-compatible HTTP on a given local port."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from fleet.agent.protocol import RuntimeName

HOST = "127.0.0.1"


class RuntimeUnavailable(Exception):
    """The adapter cannot serve this snapshot at all (no GGUF file, executable gone): restarting cannot help."""


class Adapter(ABC):
    name: ClassVar[RuntimeName]
    probe_paths: ClassVar[tuple[str, ...]] = ("/health", "/v1/models")  # any 200 means ready

    @abstractmethod
    def unavailable(self) -> str | None:
        """None when this host can run the adapter, else why not and how to fix it."""

    @abstractmethod
    def command(self, snapshot: Path, repo: str, port: int, host: str = HOST) -> list[str]:
        """The argv that serves ``snapshot`` as model ``repo`` on ``host:port``. May raise RuntimeUnavailable."""
