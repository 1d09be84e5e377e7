"""vLLM's OpenAI-compatible server: ``vllm serve <snapshot> --served-model-name <repo>``."""

from __future__ import annotations

import shutil
from pathlib import Path

from fleet.agent.runtimes.base import HOST, Adapter, RuntimeUnavailable


class VllmAdapter(Adapter):
    name = "vllm"

    def unavailable(self) -> str | None:
        return None if shutil.which("vllm") else "the vllm command is not on PATH: pip install vllm"

    def command(self, snapshot: Path, repo: str, port: int, host: str = HOST) -> list[str]:
        executable = shutil.which("vllm")
        if executable is None:
            raise RuntimeUnavailable("the vllm command is not on PATH (was vLLM uninstalled?)")
        return [executable, "serve", str(snapshot), "--served-model-name", repo, "--host", host,
                "--port", str(port)]
