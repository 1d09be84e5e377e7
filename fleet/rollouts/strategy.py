"""A rollout's strategy: how many nodes go first, how many at once, how long each soaks, how many may
fail. Validated by pydantic so a bad field is named with its fix; stored as JSON on the Rollout row.

Counts are a number of nodes (``2``) or a share of the targets (``"25%"``, rounded up).
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

_PERCENT = re.compile(r"^(\d{1,3}(?:\.\d+)?)%$")

Count = int | str


def _check_count(value: object, minimum: int) -> Count:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("use a number of nodes such as 2, or a share such as '25%'")
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    match = _PERCENT.match(value.strip())
    if not match or not (minimum == 0 or float(match.group(1)) > 0) or float(match.group(1)) > 100:
        raise ValueError(f"{value!r} is neither a number of nodes nor a share like '25%' (0-100%)")
    return value.strip()


def resolve(value: Count, total: int, minimum: int = 1) -> int:
    """A count or share of ``total`` targets as a number of nodes (shares round up, at least ``minimum``
    when there are any targets, never more than ``total``)."""
    if total <= 0:
        return 0
    number = value if isinstance(value, int) else math.ceil(float(value[:-1]) * total / 100 - 1e-9)
    return max(minimum, min(total, number))


class HealthCheckSpec(BaseModel):
    """The prompt each activated node's runtime must answer on the new version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Annotated[str, Field(min_length=1, max_length=10_000)] = "Reply with the word ready."
    expect: Annotated[str, Field(max_length=1000)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0


class Strategy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    canary: Count = Field(1, description="nodes in the first wave: a count (0 for none) or a share like '10%'")
    batch: Count = Field("25%", description="nodes per later wave: a count or a share of all targets")
    max_unavailable: Count = Field(1, description="nodes switching or proving themselves at once")
    min_ready_seconds: Annotated[float, Field(ge=0, le=86_400)] = 30.0
    canary_failure_budget: Annotated[int, Field(ge=0, le=10_000)] = 0
    failure_budget_percent: Annotated[float, Field(ge=0, le=100)] = 10.0
    auto_rollback: bool = True
    progress_deadline_seconds: Annotated[float, Field(ge=10, le=7 * 86_400)] = 600.0
    offline_grace_seconds: Annotated[float, Field(ge=0, le=7 * 86_400)] = 120.0
    order_by: Annotated[str, Field(max_length=63, pattern=r"^[A-Za-z0-9_.\-/]*$")] = "zone"
    healthcheck: HealthCheckSpec | None = Field(
        HealthCheckSpec(), description="the prompt each node must answer after its soak; null: the soak alone")

    @field_validator("canary", mode="before")
    @classmethod
    def _canary(cls, value: object) -> Count:
        return _check_count(value, 0)

    @field_validator("batch", "max_unavailable", mode="before")
    @classmethod
    def _at_least_one(cls, value: object) -> Count:
        return _check_count(value, 1)

    def later_failure_budget(self, later_targets: int) -> int:
        """Failures tolerated after the canary wave: a share of the targets in those waves (rounded down)."""
        return math.floor(self.failure_budget_percent * later_targets / 100 + 1e-9)
