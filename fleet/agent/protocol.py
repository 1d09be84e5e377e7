"""The agent ↔ server wire format (JSON over one websocket). Owned by the agent; the server imports it.

Every frame is ``{"type": ..., "v": PROTOCOL_VERSION, ...}``. Parsing goes through pydantic once; a
failure becomes an ``error`` frame whose ``detail`` names the field and what is wrong with it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1024 * 1024

NodeKindName = Literal["gpu_server", "edge_device"]
Str = Annotated[str, Field(max_length=512)]
ShortStr = Annotated[str, Field(max_length=128)]
NonNegInt = Annotated[int, Field(ge=0)]
Labels = Annotated[dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=63)]],
                   Field(max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Frame(_Model):
    v: Literal[1] = PROTOCOL_VERSION


# ---- shared parts ---------------------------------------------------------------------------------


class HostFacts(_Model):
    hostname: Str
    os: Str = ""
    arch: ShortStr = ""
    cpu_count: NonNegInt | None = None
    memory_bytes: NonNegInt | None = None
    disk_bytes: NonNegInt | None = None
    kind: NodeKindName | None = None
    labels: Labels = {}


class GpuInfo(_Model):
    index: Annotated[int, Field(ge=0, le=1023)]
    uuid: Annotated[str, Field(min_length=1, max_length=96)]
    name: ShortStr
    memory_total_bytes: NonNegInt | None = None
    driver_version: ShortStr | None = None
    cuda_version: ShortStr | None = None
    mig_mode: bool | None = None


class ModelRef(_Model):
    repo: Str
    sha: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]


class GpuProcess(_Model):
    pid: NonNegInt
    used_memory_bytes: NonNegInt | None = None
    name: ShortStr | None = None


class GpuSample(_Model):
    index: Annotated[int, Field(ge=0, le=1023)]
    uuid: Annotated[str, Field(min_length=1, max_length=96)]
    lost: bool = False
    utilization_gpu: Annotated[float, Field(ge=0, le=100)] | None = None
    utilization_memory: Annotated[float, Field(ge=0, le=100)] | None = None
    memory_used_bytes: NonNegInt | None = None
    memory_total_bytes: NonNegInt | None = None
    temperature_c: float | None = None
    power_w: Annotated[float, Field(ge=0)] | None = None
    power_limit_w: Annotated[float, Field(ge=0)] | None = None
    sm_clock_mhz: NonNegInt | None = None
    mem_clock_mhz: NonNegInt | None = None
    fan_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    energy_j: Annotated[float, Field(ge=0)] | None = None
    ecc_corrected: NonNegInt | None = None
    ecc_uncorrected: NonNegInt | None = None
    xids: Annotated[list[NonNegInt], Field(max_length=64)] = []
    processes: Annotated[list[GpuProcess], Field(max_length=256)] = []


class HostSample(_Model):
    cpu_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    memory_used_bytes: NonNegInt | None = None
    memory_total_bytes: NonNegInt | None = None
    disk_used_bytes: NonNegInt | None = None
    disk_total_bytes: NonNegInt | None = None


class ChatMessage(_Model):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=200_000)]


# ---- agent → server -------------------------------------------------------------------------------


class Hello(_Frame):
    type: Literal["hello"]
    agent_version: ShortStr
    host: HostFacts
    gpus: Annotated[list[GpuInfo], Field(max_length=256)] = []
    gpu_note: Str | None = None
    runtimes: Annotated[list[ShortStr], Field(max_length=16)] = []
    installed: Annotated[list[ModelRef], Field(max_length=256)] = []
    active: Annotated[list[ModelRef], Field(max_length=16)] = []
    in_flight: Annotated[list[ShortStr], Field(max_length=256)] = []


class Metrics(_Frame):
    type: Literal["metrics"]
    ts: float
    gpus: Annotated[list[GpuSample], Field(max_length=256)] = []
    host: HostSample | None = None


class MetricsPoint(_Model):
    """One buffered sample in a catch-up batch (processes left out: they only matter now)."""

    ts: float
    gpus: Annotated[list[GpuSample], Field(max_length=256)] = []
    host: HostSample | None = None


class MetricsBatch(_Frame):
    """Samples taken while the socket was down, sent after a reconnect. ``sent`` is the agent's clock
    at sending, so the server can map ``ts`` onto its own clock."""

    type: Literal["metrics.batch"]
    sent: float
    points: Annotated[list[MetricsPoint], Field(min_length=1, max_length=600)]


class CommandEvent(_Frame):
    type: Literal["event"]
    command_id: ShortStr
    state: ShortStr
    bytes_done: NonNegInt | None = None
    bytes_total: NonNegInt | None = None
    error: Str | None = None


class ChatDelta(_Frame):
    type: Literal["chat.delta"]
    request_id: ShortStr
    text: Annotated[str, Field(max_length=65536)]


class ChatDone(_Frame):
    type: Literal["chat.done"]
    request_id: ShortStr
    finish_reason: ShortStr = "stop"
    usage: dict[ShortStr, NonNegInt] = {}


class ChatError(_Frame):
    type: Literal["chat.error"]
    request_id: ShortStr
    error: Str


class Pong(_Frame):
    type: Literal["pong"]
    nonce: ShortStr = ""


AgentFrame = Annotated[
    Hello | Metrics | MetricsBatch | CommandEvent | ChatDelta | ChatDone | ChatError | Pong, Field(discriminator="type")
]

# ---- server → agent -------------------------------------------------------------------------------


class Welcome(_Frame):
    type: Literal["welcome"]
    node_id: NonNegInt
    node_name: ShortStr
    heartbeat_interval: Annotated[float, Field(gt=0)]
    metrics_interval: Annotated[float, Field(gt=0)]
    offline_after: Annotated[float, Field(gt=0)]
    mirror_url: Str = ""


class Deploy(_Frame):
    type: Literal["deploy"]
    command_id: ShortStr
    repo: Str
    sha: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
    manifest: list[dict[str, Any]] = []
    activate: bool = False


class Activate(_Frame):
    type: Literal["activate"]
    command_id: ShortStr
    repo: Str
    sha: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]


class Rollback(_Frame):
    type: Literal["rollback"]
    command_id: ShortStr
    repo: Str


class Remove(_Frame):
    type: Literal["remove"]
    command_id: ShortStr
    repo: Str
    sha: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]


class HealthCheck(_Frame):
    type: Literal["healthcheck"]
    command_id: ShortStr
    prompt: Annotated[str, Field(max_length=10_000)]
    timeout: Annotated[float, Field(gt=0, le=3600)] = 60


class Chat(_Frame):
    type: Literal["chat"]
    request_id: ShortStr
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=512)]
    params: dict[ShortStr, Any] = {}


class ChatCancel(_Frame):
    type: Literal["chat.cancel"]
    request_id: ShortStr


class Control(_Frame):
    """Load shedding: send metrics every ``metrics_interval`` seconds from now on."""

    type: Literal["control"]
    metrics_interval: Annotated[float, Field(gt=0, le=3600)]
    reason: Str = ""


class Ping(_Frame):
    type: Literal["ping"]
    nonce: ShortStr = ""


class Error(_Frame):
    type: Literal["error"]
    code: ShortStr
    detail: Str


ServerFrame = Annotated[
    Welcome | Deploy | Activate | Rollback | Remove | HealthCheck | Chat | ChatCancel | Control | Ping | Error,
    Field(discriminator="type"),
]

_agent_adapter: TypeAdapter = TypeAdapter(AgentFrame)
_server_adapter: TypeAdapter = TypeAdapter(ServerFrame)


class FrameError(ValueError):
    """A frame that cannot be accepted; ``code`` and ``detail`` go back in an ``error`` frame."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    def to_frame(self) -> dict[str, Any]:
        return {"type": "error", "v": PROTOCOL_VERSION, "code": self.code, "detail": self.detail}


def _describe(error: ValidationError, tagged: bool) -> str:
    first = error.errors(include_url=False)[0]
    loc = list(first.get("loc", ()))
    if tagged and loc:
        loc = loc[1:]  # the first element is the discriminator value ("hello"), not a field
    field = ".".join(str(part) for part in loc) or "frame"
    message = first.get("msg", "invalid")
    extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{field}: {message}{extra}"


def _parse(data: str | bytes, adapter: TypeAdapter, max_bytes: int) -> Any:
    size = len(data.encode() if isinstance(data, str) else data)
    if size > max_bytes:
        raise FrameError("frame_too_large", f"frame: {size} bytes is over the {max_bytes}-byte limit")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError("invalid_json", f"frame: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise FrameError("invalid_frame", "frame: must be a JSON object with a 'type' field")
    if "type" not in raw:
        raise FrameError("invalid_frame", "type: Field required")
    if raw.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise FrameError(
            "unsupported_version",
            f"v: protocol version {raw.get('v')!r} is not supported; use {PROTOCOL_VERSION}",
        )
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first.get("type") == "union_tag_invalid":
            raise FrameError("unknown_type", f"type: unknown frame type {raw.get('type')!r}") from None
        raise FrameError("invalid_frame", _describe(exc, tagged=True)) from None


def parse_agent_frame(data: str | bytes, max_bytes: int = MAX_FRAME_BYTES) -> Any:
    """Validate a frame sent by an agent. Raises FrameError."""
    return _parse(data, _agent_adapter, max_bytes)


def parse_server_frame(data: str | bytes, max_bytes: int = 16 * MAX_FRAME_BYTES) -> Any:
    """Validate a frame sent by the server. Raises FrameError."""
    return _parse(data, _server_adapter, max_bytes)


def dump(frame: BaseModel) -> str:
    """Serialise a frame; absent (None) fields are left out, which the receiver reads as null."""
    return frame.model_dump_json(exclude_none=True)
