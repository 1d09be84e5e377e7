"""Fleet's own runtime (``fleet.agent.runtimes.server``): transformers + torch, from the ``runtime`` extra."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from fleet.agent.runtimes.base import HOST, Adapter


class BuiltinAdapter(Adapter):
    name = "builtin"

    def unavailable(self) -> str | None:
        missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
        if missing:
            return (f"{' and '.join(missing)} not installed: install the runtime extra "
                    "(pip install 'fleet[runtime]')")
        return None

    def command(self, snapshot: Path, repo: str, port: int, host: str = HOST) -> list[str]:
        return [sys.executable, "-m", "fleet.agent.runtimes.server", "--model", str(snapshot),
                "--served-model-name", repo, "--host", host, "--port", str(port)]
