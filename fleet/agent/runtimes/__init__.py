"""Runtimes: processes that serve one active model version each over OpenAI-compatible HTTP on 127.0.0.1.

``supervisor.py`` starts, probes, restarts and stops them; an adapter per runtime builds the command line.
Nothing here imports torch: the builtin runtime is a separate process (``fleet.agent.runtimes.server``).
"""

from __future__ import annotations

from fleet.agent.runtimes.base import Adapter, RuntimeUnavailable
from fleet.agent.runtimes.builtin import BuiltinAdapter
from fleet.agent.runtimes.llamacpp import LlamaCppAdapter
from fleet.agent.runtimes.vllm import VllmAdapter

ADAPTERS: dict[str, Adapter] = {adapter.name: adapter
                                for adapter in (BuiltinAdapter(), VllmAdapter(), LlamaCppAdapter())}
NONE = "none"
CHOICES = (*ADAPTERS, NONE)

__all__ = ["ADAPTERS", "CHOICES", "NONE", "Adapter", "RuntimeUnavailable", "available_runtimes", "default_runtime",
           "choose_adapter"]


def available_runtimes() -> list[str]:
    """The adapters this host can run (``Hello.runtimes``)."""
    return [name for name, adapter in ADAPTERS.items() if adapter.unavailable() is None]


def default_runtime() -> str:
    """builtin when torch and transformers are installed, else none."""
    return "builtin" if ADAPTERS["builtin"].unavailable() is None else NONE


def choose_adapter(name: str) -> Adapter | None:
    """The adapter for ``--runtime NAME`` (None for ``none``); ValueError says what is wrong and the fix."""
    if name == NONE:
        return None
    adapter = ADAPTERS.get(name)
    if adapter is None:
        raise ValueError(f"--runtime {name!r} is not a runtime; choose one of {', '.join(CHOICES)}")
    problem = adapter.unavailable()
    if problem:
        others = [n for n in available_runtimes() if n != name]
        hint = f" (usable here: {', '.join(others)})" if others else ""
        raise ValueError(f"--runtime {name}: {problem}; or choose another runtime{hint}, or --runtime none")
    return adapter
