"""GPU collectors: where the agent's GPU inventory and live samples come from.

``nvml`` reads NVIDIA GPUs, ``amd`` AMD GPUs (amdsmi), ``jetson`` the GPU of a Jetson board (jtop or
tegrastats), ``hostonly`` stands in on a CPU-only host; ``simulated`` makes deterministic fake GPUs for
the demo, tests and benchmarks. All answer without raising: a missing driver, an unsupported field or a
lost GPU becomes a note, a ``None`` or ``lost=True``. :func:`select_collector` picks the first that
works on this host (NVML, AMD, Jetson, else none) and says why it skipped the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from fleet.agent.protocol import GpuInfo, GpuSample


@runtime_checkable
class Collector(Protocol):
    def inventory(self) -> tuple[list[GpuInfo], str | None]:
        """The GPUs present now, plus a human note (why there are none, which ones were skipped)."""
        ...

    def sample(self) -> list[GpuSample]:
        """Live values, one entry per GPU; unsupported fields are None."""
        ...

    def host_overrides(self) -> dict[str, Any]:
        """HostFacts fields this collector dictates (a simulated Jetson is aarch64/edge_device)."""
        ...

    def close(self) -> None: ...


class HostOnlyCollector:
    """No accelerator the agent can read: host metrics only (they come from psutil, not collectors).

    ``kind`` is ``cpu_node`` when no accelerator stack is present at all, None when one is present but
    failing (a broken driver does not make a GPU server a CPU node).
    """

    name = "none"

    def __init__(self, note: str, kind: str | None = "cpu_node") -> None:
        self.note = note
        self.kind = kind

    def inventory(self) -> tuple[list[GpuInfo], str | None]:
        return [], self.note

    def sample(self) -> list[GpuSample]:
        return []

    def host_overrides(self) -> dict[str, Any]:
        return {"kind": self.kind} if self.kind else {}

    def close(self) -> None:
        pass


@dataclass
class Selection:
    collector: Collector
    used: str  # "nvml", "amd", "jetson", "none", "simulated:<profile>"
    skipped: dict[str, str] = field(default_factory=dict)  # collector name -> why it was not used

    def report(self) -> dict[str, Any]:
        """What ``fleet-agent status`` shows (kept in status.json)."""
        return {"used": self.used, "skipped": dict(self.skipped)}


# A probe answers (collector or None, why not, whether that accelerator's stack is present but failing).
Probe = Callable[[], tuple[Collector | None, str, bool]]


def probe_nvml() -> tuple[Collector | None, str, bool]:
    try:
        from fleet.agent.collectors.nvml import NO_LIBRARY_NOTE, NvmlCollector
    except ImportError as exc:
        return None, f"nvidia-ml-py not installed ({exc.name or exc})", False
    collector = NvmlCollector()
    gpus, note = collector.inventory()
    if gpus:
        return collector, "", False
    collector.close()
    absent = note in (NO_LIBRARY_NOTE, None) or note.startswith("NVML reports no NVIDIA GPUs")
    return None, note or "no NVIDIA GPUs", not absent


def probe_amd() -> tuple[Collector | None, str, bool]:
    try:
        from fleet.agent.collectors.amd import AmdCollector

        collector = AmdCollector()
    except (ImportError, OSError) as exc:  # amdsmi absent, or libamd_smi.so not loadable
        return None, f"amdsmi (ROCm) not available ({exc})", False
    gpus, note = collector.inventory()
    if gpus:
        return collector, "", False
    collector.close()
    return None, note or "no AMD GPUs", False


def probe_jetson() -> tuple[Collector | None, str, bool]:
    from fleet.agent.collectors.jetson import Board, JetsonCollector, jtop_available, tegrastats_path

    board = Board.read()
    if not board.is_jetson:
        return None, "not a Jetson (no /etc/nv_tegra_release, device-tree model is not a Jetson)", False
    if not jtop_available() and tegrastats_path() is None:
        return None, f"{board.model or 'Jetson'}: neither jtop (jetson-stats) nor tegrastats is installed", True
    return JetsonCollector(board=board), "", False


PROBES: dict[str, Probe] = {"nvml": probe_nvml, "amd": probe_amd, "jetson": probe_jetson}


def select_collector(probes: dict[str, Probe] | None = None) -> Selection:
    """The first collector that works on this host, in the order NVML, AMD, Jetson; else host-only."""
    skipped: dict[str, str] = {}
    failing = False
    for name, probe in (probes or PROBES).items():
        try:
            collector, why, broken = probe()
        except Exception as exc:  # a probe bug must not keep the agent from starting
            collector, why, broken = None, f"probe failed: {exc}", True
        if collector is not None:
            return Selection(collector, name, skipped)
        skipped[name] = why
        failing = failing or broken
    note = "no accelerator found: reporting 0 GPUs (" + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")"
    return Selection(HostOnlyCollector(note[:512], kind=None if failing else "cpu_node"), "none", skipped)


def make_selection(simulate: str | None, seed: str, faults: Sequence[Any] = ()) -> Selection:
    """A simulated collector for profile ``simulate`` (seeded by ``seed``, with injected ``faults``),
    else the one :func:`select_collector` picks.

    Raises ValueError for an unknown profile, or for faults without a simulation.
    """
    if simulate:
        from fleet.agent.collectors.simulated import SimulatedCollector

        return Selection(SimulatedCollector(simulate, seed, faults=tuple(faults)), f"simulated:{simulate}")
    if faults:
        raise ValueError("--fault needs --simulate: faults are injected into simulated GPUs only")
    return select_collector()


def make_collector(simulate: str | None, seed: str, faults: Sequence[Any] = ()) -> Collector:
    return make_selection(simulate, seed, faults).collector
