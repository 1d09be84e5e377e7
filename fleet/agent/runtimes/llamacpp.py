"""llama.cpp: its ``llama-server`` binary, or llama-cpp-python's ``python -m llama_cpp.server`` when only
that is installed. Both serve one GGUF file from the snapshot under the repo's name (``--alias``)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

from fleet.agent.runtimes.base import HOST, Adapter, RuntimeUnavailable

SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def pick_gguf(snapshot: Path) -> Path:
    """The GGUF file to load: the first shard of a split model, else the largest file (the best quant a
    publisher put in one repo is usually the biggest); llama.cpp finds the other shards itself."""
    files = sorted(path for path in snapshot.rglob("*.gguf") if path.is_file())
    if not files:
        raise RuntimeUnavailable(f"no .gguf file in {snapshot}: llama.cpp serves GGUF models only")
    shards = [path for path in files if (match := SHARD.search(path.name)) and int(match.group(1)) == 1]
    if shards:
        return shards[0]
    return max(files, key=lambda path: path.stat().st_size)


def llama_cpp_python() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppAdapter(Adapter):
    name = "llamacpp"

    def unavailable(self) -> str | None:
        if shutil.which("llama-server") or llama_cpp_python():
            return None
        return "neither llama-server is on PATH nor llama-cpp-python installed (pip install 'llama-cpp-python[server]')"

    def command(self, snapshot: Path, repo: str, port: int, host: str = HOST) -> list[str]:
        model = str(pick_gguf(snapshot))
        executable = shutil.which("llama-server")
        if executable:
            return [executable, "-m", model, "--alias", repo, "--host", host, "--port", str(port)]
        if llama_cpp_python():
            return [sys.executable, "-m", "llama_cpp.server", "--model", model, "--model_alias", repo,
                    "--host", host, "--port", str(port)]
        raise RuntimeUnavailable("llama-server is not on PATH and llama-cpp-python is not installed")
