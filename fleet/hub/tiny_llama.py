"""A tiny random Llama (13,520 parameters) with a real byte-level tokenizer and a chat template, written
without torch: the test and demo model every runtime can load and chat with in milliseconds.

The tokenizer is byte-level BPE without merges (one token per UTF-8 byte, GPT-2's byte alphabet) plus four
special tokens, built with the ``tokenizers`` library offline. The weights are random, but the output head
only has non-zero rows for printable ASCII and the newline: answers are readable gibberish, never contain
control bytes or broken UTF-8, and never end with an end-of-sequence token on their own, so their length is
exactly ``max_tokens`` (default 64 from ``generation_config.json``) unless a stop string or a cancel ends them.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|pad|>", "<s>", "<|im_end|>", "<|im_start|>"]  # ids 0..3; bytes follow at 4..259
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = len(SPECIAL_TOKENS)
DEFAULT_MAX_NEW_TOKENS = 64
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
    "vocab_size": BYTE_OFFSET + 256, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
    "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID, "torch_dtype": "float32",
}
SPOKEN = [ord("\n"), *range(0x20, 0x7F)]  # the bytes the output head can produce


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


def _weights(seed: int) -> dict[str, tuple[list[int], list[float]]]:
    rng = random.Random(seed)
    hidden = CONFIG["hidden_size"]
    spoken = {BYTE_OFFSET + byte for byte in SPOKEN}
    tensors = {}
    for name, shape in _shapes().items():
        count = 1
        for dim in shape:
            count *= dim
        if name.endswith("norm.weight"):
            values = [1.0] * count
        elif name == "lm_head.weight":
            # Large rows for the spoken bytes, zero rows for the rest: their logits (0) stay far below the
            # best spoken one, so sampling at temperature <= 1 practically never picks them, greedy never.
            values = []
            for row in range(shape[0]):
                values += [rng.gauss(0.0, 2.0) if row in spoken else 0.0 for _ in range(hidden)]
        else:
            values = [rng.gauss(0.0, 0.5 if "layers" in name else 1.0) for _ in range(count)]
        tensors[name] = (shape, values)
    return tensors


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: every byte as a printable character, the one ByteLevel pre-tokenizers use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def build_tokenizer():
    """A byte-level BPE tokenizer without merges (tokenizers.Tokenizer), specials first."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({char: BYTE_OFFSET + byte for byte, char in bytes_to_unicode().items()})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    return tokenizer


def write_tokenizer(folder: Path) -> None:
    build_tokenizer().save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>", "additional_special_tokens": ["<|im_start|>"], "chat_template": CHAT_TEMPLATE,
        "model_max_length": CONFIG["max_position_embeddings"], "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def write_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Write the model (config, safetensors, generation config, tokenizer) into ``folder``; deterministic."""
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", _weights(seed))
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    generation = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
                  "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
    (folder / "generation_config.json").write_text(json.dumps(generation) + "\n")
    write_tokenizer(folder)
    return folder
