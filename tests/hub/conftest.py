"""Hub fixtures: a private content store, the fake upstream hub, small model folders built here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.hub.fakehub import FakeHub

MIB = 1024 * 1024


@pytest.fixture
def hub_root(settings, tmp_path) -> Path:
    settings.FLEET_HUB_ROOT = tmp_path / "hub"
    settings.FLEET_HUB_DISK_MARGIN = 0
    return settings.FLEET_HUB_ROOT


@pytest.fixture
def fake_hub(settings):
    hub = FakeHub().start()
    settings.FLEET_HF_UPSTREAM = hub.url
    settings.FLEET_HF_OFFLINE = False
    settings.FLEET_HF_TOKEN = ""
    yield hub
    hub.stop()


def sample_files(weights_mib: int = 3, seed: bytes = b"a") -> dict[str, bytes]:
    """A model-shaped repo: weights (LFS), config and tokenizer (small), and files the filter must skip."""
    block = (seed * 64 + os.urandom(64)) * 4
    weights = (block * (weights_mib * MIB // len(block) + 1))[: weights_mib * MIB]
    return {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 16}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "seed": seed.decode()}).encode(),
        "model.safetensors": weights,
        "pytorch_model.bin": b"legacy" * 100,
        "original/consolidated.pth": b"original" * 100,
        "README.md": b"# tiny\n",
    }


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A real (random, tiny) Llama saved with save_pretrained as safetensors; skipped without torch."""
    pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[test]' installs it)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[test])")
    import torch

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, vocab_size=128,
                                      max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(autouse=True)
def _downloads_finish():
    """Downloads only start in the engine's hub-sync task (sync.tick); one a test started ends before the next."""
    from fleet.hub import sync

    yield
    sync.wait_idle(30)


@pytest.fixture
def hub_engine():
    """The engine's `hub-sync` task running in this process, as `manage.py engine` runs it."""
    import threading

    from django.db import close_old_connections, connection

    from fleet.hub import sync

    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            close_old_connections()
            try:
                sync.tick()
            except Exception:  # the engine logs and carries on; so does this stand-in
                pass
            stop.wait(0.1)
        connection.close()

    thread = threading.Thread(target=loop, name="test-engine", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)
    sync.wait_idle(30)
