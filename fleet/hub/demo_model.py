"""The embedded demo's model: a tiny random Llama (9,296 parameters) written without torch, published
into the mirror with the same import an air-gapped site uses."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

from django.conf import settings

DEMO_REPO = "fleet-demo/tiny-llama"
DEMO_REVISION = "v1"
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 128,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
}


def _shapes() -> dict[str, list[int]]:
    h, i, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    shapes = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h], "lm_head.weight": [v, h]}
    for n in range(CONFIG["num_hidden_layers"]):
        prefix = f"model.layers.{n}."
        shapes.update({
            prefix + "self_attn.q_proj.weight": [h, h], prefix + "self_attn.k_proj.weight": [h, h],
            prefix + "self_attn.v_proj.weight": [h, h], prefix + "self_attn.o_proj.weight": [h, h],
            prefix + "mlp.gate_proj.weight": [i, h], prefix + "mlp.up_proj.weight": [i, h],
            prefix + "mlp.down_proj.weight": [h, i],
            prefix + "input_layernorm.weight": [h], prefix + "post_attention_layernorm.weight": [h],
        })
    return shapes


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], list[float]]]) -> None:
    """The safetensors format: an 8-byte header length, a JSON header, then the raw little-endian data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, (shape, values) in sorted(tensors.items()):
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def write_tiny_llama(folder: Path, seed: int = 0) -> Path:
    rng = random.Random(seed)
    tensors = {}
    for name, shape in _shapes().items():
        count = 1
        for dim in shape:
            count *= dim
        norm = name.endswith("norm.weight")
        tensors[name] = (shape, [1.0] * count if norm else [rng.gauss(0.0, 0.02) for _ in range(count)])
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    return folder


def publish_demo_model(stdout=None) -> str:
    """Import the tiny model once (a restarted demo finds it imported); returns its sha."""
    from fleet.hub.importer import import_folder

    folder = write_tiny_llama(Path(settings.VAR_DIR) / "demo" / "tiny-llama")
    version, created = import_folder("demo", folder, DEMO_REPO, DEMO_REVISION)
    if stdout is not None and created:
        stdout.write(f"published {DEMO_REPO}@{version.sha[:12]} into the mirror (Models page)")
    return version.sha


def publish_smollm2(stdout=None) -> dict[str, Any]:
    """Convert SmolLM2 once (cached under FLEET_DEMO_MODELS) and import v1, v2 and v3-broken into the mirror
    with the same folder import; returns the versions by revision. A second call imports nothing."""
    from fleet.hub import smollm2
    from fleet.hub.importer import import_folder

    root = Path(settings.FLEET_DEMO_MODELS) / smollm2.FOLDER
    v1, _ = smollm2.ensure_converted(root, notify=stdout.write if stdout is not None else None)
    versions = {}
    for revision, folder in smollm2.write_revisions(v1, root).items():
        version, created = import_folder("demo", folder, smollm2.REPO, revision)
        versions[revision] = version
        if stdout is not None and created:
            stdout.write(f"published {smollm2.REPO} {revision} ({version.sha[:12]}) into the mirror")
    return versions


def rollout_bytes(old: Any, new: Any) -> int:
    """Bytes a node holding ``old`` downloads to get ``new``: the files whose content it lacks (its HF cache
    keeps blobs by content too)."""
    held = set(old.files.values_list("blob_id", flat=True))  # blobs are content-addressed
    return sum(file.size for file in new.files.exclude(blob_id__in=held))
