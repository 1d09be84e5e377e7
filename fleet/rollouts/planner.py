"""Waves from a strategy: the canary first, then batches, in a stable order (a label such as zone, then
the node name), so that a zone changes together and a preview shows exactly what will happen."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fleet.rollouts.strategy import Strategy, resolve


@dataclass(frozen=True)
class PlanNode:
    id: int
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


def ordered(nodes: Iterable[PlanNode], order_by: str) -> list[PlanNode]:
    """By the ``order_by`` label (nodes without it last), then by name."""

    def key(node: PlanNode) -> tuple:
        value = node.labels.get(order_by) if order_by else None
        return (value is None, str(value or ""), node.name, node.id)

    return sorted(nodes, key=key)


def plan_waves(nodes: Iterable[PlanNode], strategy: Strategy) -> list[list[PlanNode]]:
    """Wave 0 is the canary (absent when ``canary`` is 0); every later wave holds ``batch`` nodes."""
    order = ordered(nodes, strategy.order_by)
    total = len(order)
    if not total:
        return []
    canary = resolve(strategy.canary, total, minimum=0)
    waves = [order[:canary]] if canary else []
    rest = order[canary:]
    batch = resolve(strategy.batch, total)
    waves += [rest[start:start + batch] for start in range(0, len(rest), batch)]
    return waves


def max_unavailable(strategy: Strategy, total: int) -> int:
    return resolve(strategy.max_unavailable, total)
