"""The model behind the builtin runtime: transformers + torch, imported here only (never by the agent).

One generation runs at a time (``Engine.lock``): a single model instance on one device has no batching in
plain ``generate``, and two interleaved ``generate`` calls would share nothing useful, only slow each other.
Requests queue on the lock in arrival order (roughly: ``threading.Lock`` is not strictly fair) and a queued
request whose client leaves gives up its place without running.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.agent.runtimes.server.requests import ApiError, ChatRequest
from fleet.agent.runtimes.server.text import IncrementalDecoder, StopScanner

LOCK_POLL = 0.1  # seconds between "is the client still there?" checks while queued


class LoadError(Exception):
    pass


@dataclass
class Outcome:
    finish_reason: str | None  # "stop" | "length"; None when the client left (nothing to answer)
    prompt_tokens: int
    completion_tokens: int


class Stats:
    """The counters behind ``GET /fleet/stats``: tests watch them to prove that a cancel stops generation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.completion_tokens_total = 0
        self.requests_total = 0
        self.requests_active = 0

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"completion_tokens_total": self.completion_tokens_total,
                    "requests_total": self.requests_total, "requests_active": self.requests_active}


class Engine:
    def __init__(self, model_dir: Path, device: str | None = None, threads: int = 0):
        import torch
        import transformers

        if threads > 0:
            torch.set_num_threads(threads)
        transformers.logging.set_verbosity_error()
        self.torch = torch
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
            if not getattr(self.tokenizer, "chat_template", None):
                raise LoadError(f"{model_dir} has no chat template (tokenizer_config.json chat_template); "
                                "the builtin runtime serves chat models only")
            self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = torch.float32
            if self.device.startswith("cuda"):
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        except LoadError:
            raise
        except Exception as exc:
            raise LoadError(f"cannot load the model from {model_dir}: {type(exc).__name__}: {exc}") from exc
        self.model = model.to(self.device).eval()
        config = self.model.config
        self.context = int(getattr(config, "max_position_embeddings", 0) or self.tokenizer.model_max_length)
        self.lock = threading.Lock()
        # A fast tokenizer used from two threads at once can fail with "Already borrowed" (encoding sets its
        # truncation state): prompts are encoded outside the generation lock, so both sides take this one.
        self.tokenizer_lock = threading.Lock()
        self.stats = Stats()

    # ---- before queueing ------------------------------------------------------------------------------

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        try:
            with self.tokenizer_lock:
                encoded = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True,
                                                             tokenize=True, return_dict=True)
        except Exception as exc:  # e.g. a template that insists on alternating roles
            raise ApiError(400, f"messages: the model's chat template refused them: {exc}", param="messages") from None
        ids = list(encoded["input_ids"])
        if len(ids) >= self.context:
            raise ApiError(400, f"messages: the prompt is {len(ids)} tokens; this model's context is "
                                f"{self.context} tokens", param="messages", code="context_length_exceeded")
        if request.max_tokens is not None and len(ids) + request.max_tokens > self.context:
            raise ApiError(400, f"max_tokens: {request.max_tokens} plus the {len(ids)}-token prompt exceeds this "
                                f"model's context of {self.context} tokens; ask for at most "
                                f"{self.context - len(ids)}", param="max_tokens", code="context_length_exceeded")
        return ids

    def generation_config(self, request: ChatRequest, prompt_len: int) -> Any:
        """The model's generation_config.json defaults, overridden by what the request says (as vLLM does)."""
        config = copy.deepcopy(self.model.generation_config)
        remaining = self.context - prompt_len
        default_max = config.max_new_tokens or remaining
        config.max_new_tokens = min(request.max_tokens or default_max, remaining)
        config.max_length = None
        config.min_new_tokens = min(request.min_tokens, config.max_new_tokens) or None
        temperature = request.temperature if request.temperature is not None else (config.temperature or 1.0)
        top_p = request.top_p if request.top_p is not None else (config.top_p or 1.0)
        if temperature == 0:
            config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        else:
            config.do_sample, config.temperature, config.top_p = True, temperature, top_p
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        return config

    # ---- the generation -------------------------------------------------------------------------------

    def run(self, request: ChatRequest, prompt: list[int], emit: Callable[[str], bool],
            gone: Callable[[], bool]) -> Outcome:
        """Generate, calling ``emit(text)`` as text becomes final. Ends early when ``emit`` returns False or
        ``gone()`` is True (the client left): then ``finish_reason`` is None."""
        torch = self.torch
        self.stats.add(requests_total=1, requests_active=1)
        try:
            while not self.lock.acquire(timeout=LOCK_POLL):
                if gone():
                    return Outcome(None, len(prompt), 0)
            try:
                return self._generate(torch, request, prompt, emit, gone)
            finally:
                self.lock.release()
        finally:
            self.stats.add(requests_active=-1)

    def _generate(self, torch: Any, request: ChatRequest, prompt: list[int], emit: Callable[[str], bool],
                  gone: Callable[[], bool]) -> Outcome:
        import transformers

        config = self.generation_config(request, len(prompt))
        eos = config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        decoder, scanner = IncrementalDecoder(self.tokenizer), StopScanner(request.stop)
        state = {"tokens": 0, "last": None, "left": False, "prompt_seen": False}
        stats, tokenizer_lock = self.stats, self.tokenizer_lock

        class Streamer(transformers.generation.streamers.BaseStreamer):
            def put(self, value: Any) -> None:
                if not state["prompt_seen"]:  # generate hands the prompt over first
                    state["prompt_seen"] = True
                    return
                token = int(value.reshape(-1)[0])
                state["tokens"] += 1
                state["last"] = token
                stats.add(completion_tokens_total=1)
                if state["left"] or scanner.stopped:
                    return
                with tokenizer_lock:
                    delta = decoder.add(token) if token not in eos_ids else ""
                text = scanner.feed(delta)
                if (text and not emit(text)) or gone():
                    state["left"] = True

            def end(self) -> None:
                pass

        class Cancel(transformers.StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = state["left"] or scanner.stopped or gone()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        if request.seed is not None:
            torch.manual_seed(request.seed)
        ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode():
            self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                streamer=Streamer(), stopping_criteria=transformers.StoppingCriteriaList([Cancel()]))
        if state["left"]:
            return Outcome(None, len(prompt), state["tokens"])
        tail = scanner.flush()
        if tail and not emit(tail):
            return Outcome(None, len(prompt), state["tokens"])
        stopped = scanner.stopped or state["last"] in eos_ids
        return Outcome("stop" if stopped else "length", len(prompt), state["tokens"])
