"""The wire format's foundations: the protocol version, the bounds every value keeps (DESIGN §3), the
bounded text type and the base models every frame builds on (fleet.agent.protocol, protocol_site)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1
COMPACT_METRICS_VERSION = 2  # a ``metrics`` frame may come in the compact encoding (protocol_compact)
MAX_FRAME_BYTES = 1024 * 1024
MAX_GPUS = 256  # per node, in every frame that lists them

# Bounds (DESIGN §3): every number finite and within what its column and its consumers take, every
# string within its column's length. JSON numbers past 2**53 lose precision in browsers and in float
# arithmetic (rollup averages), so no count or byte value may exceed it.
MAX_INT = 2**53
MAX_INT32 = 2**31 - 1
MAX_TS = 4_102_444_800.0  # 2100-01-01: a timestamp past it is a broken clock, not a sample
MAX_RATE = 10**12  # bytes per second (1 TB/s): past any NIC or disk a node has


def _text(value: str) -> str:
    """No NUL (PostgreSQL refuses it in text) and no lone surrogate (not encodable as UTF-8)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def Text(max_length: int, min_length: int = 0):  # noqa: N802 - a type factory, used like a type
    return Annotated[str, Field(min_length=min_length, max_length=max_length), AfterValidator(_text)]


NodeKindName = Literal["gpu_server", "edge_device", "cpu_node"]
Str = Text(512)
ShortStr = Text(128)
NonNegInt = Annotated[int, Field(ge=0, le=MAX_INT)]
Count = Annotated[int, Field(ge=0, le=MAX_INT32)]
Percent = Annotated[float, Field(ge=0, le=100)]
Timestamp = Annotated[float, Field(ge=0, le=MAX_TS)]
GpuIndex = Annotated[int, Field(ge=0, le=1023)]
GpuUuid = Text(96, min_length=1)
Labels = Annotated[dict[Text(63, min_length=1), Text(63)], Field(max_length=64)]
Sha = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
RepoId = Text(96, min_length=1)  # the hub's column (and Hugging Face's own limit)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Frame(_Model):
    v: Literal[1] = PROTOCOL_VERSION


class FrameError(ValueError):
    """A frame that cannot be accepted; ``code`` and ``detail`` go back in an ``error`` frame."""

    def __init__(self, code: str, detail: str):
        detail = detail[:500]  # it goes back in an `error` frame, whose detail is bounded
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    def to_frame(self) -> dict[str, Any]:
        return {"type": "error", "v": PROTOCOL_VERSION, "code": self.code, "detail": self.detail}
