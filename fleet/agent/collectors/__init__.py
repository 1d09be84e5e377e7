"""GPU collectors: where the agent's GPU inventory and live samples come from.

``nvml`` reads real NVIDIA GPUs; ``simulated`` makes deterministic fake ones for the demo, tests and
benchmarks. Both answer without raising: a missing driver, an unsupported field or a lost GPU becomes
a note, a ``None`` or ``lost=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def make_collector(simulate: str | None, seed: str, faults: Sequence[Any] = ()) -> Collector:
    """A simulated collector for profile ``simulate`` (seeded by ``seed``, with injected ``faults``),
    else the NVML one.

    Raises ValueError for an unknown profile, or for faults without a simulation.
    """
    if simulate:
        from fleet.agent.collectors.simulated import SimulatedCollector

        return SimulatedCollector(simulate, seed, faults=tuple(faults))
    if faults:
        raise ValueError("--fault needs --simulate: faults are injected into simulated GPUs only")
    from fleet.agent.collectors.nvml import NvmlCollector

    return NvmlCollector()
