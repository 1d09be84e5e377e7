"""The agent ↔ server wire format (JSON over one websocket). Owned by the agent; the server imports it
(this module re-exports protocol_base's bounds, protocol_metrics' and protocol_site's frames and
protocol_compact's encoder: one import for every frame).

Every frame is ``{"type": ..., "v": PROTOCOL_VERSION, ...}``; a ``metrics`` frame may also come as
``"v": 2``, its compact encoding, to a server whose ``welcome`` lists 2 in ``protocols``. Parsing is one
pass of pydantic-core over the JSON text; a failure becomes an ``error`` frame whose ``detail`` names the
field and what is wrong with it.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator

from fleet.agent.protocol_base import (  # noqa: F401 - re-exported: the wire format's one import
    COMPACT_METRICS_VERSION,
    MAX_FRAME_BYTES,
    MAX_GPUS,
    MAX_INT,
    MAX_INT32,
    MAX_RATE,
    MAX_TS,
    PROTOCOL_VERSION,
    Count,
    FrameError,
    GpuIndex,
    GpuUuid,
    Labels,
    NodeKindName,
    NonNegInt,
    Percent,
    RepoId,
    Sha,
    ShortStr,
    Str,
    Text,
    Timestamp,
    _Frame,
    _Model,
)
from fleet.agent.protocol_compact import compact_loc, dump_compact, looks_compact, parse_compact, parse_compact_json
from fleet.agent.protocol_metrics import (  # noqa: F401
    GpuProcess,
    GpuSample,
    HostSample,
    Metrics,
    MetricsBatch,
    MetricsPoint,
    distinct_gpus,
)
from fleet.agent.protocol_site import CacheReport, Site, SiteCacheAdvert, SiteCacheOffer  # noqa: F401

# ---- shared parts ---------------------------------------------------------------------------------


class HostFacts(_Model):
    hostname: Text(255)
    os: Text(200) = ""
    arch: Text(32) = ""
    cpu_count: Annotated[int, Field(ge=0, le=65535)] | None = None
    memory_bytes: NonNegInt | None = None
    disk_bytes: NonNegInt | None = None
    kind: NodeKindName | None = None
    labels: Labels = {}


class GpuInfo(_Model):
    index: GpuIndex
    uuid: GpuUuid
    name: ShortStr
    memory_total_bytes: NonNegInt | None = None
    driver_version: Text(40) | None = None
    cuda_version: Text(20) | None = None
    mig_mode: bool | None = None
    interconnect: Text(64) | None = None  # e.g. "xgmi hive 0x5a1b, 16 lanes" (AMD); None where unknown


class ModelRef(_Model):
    repo: RepoId
    sha: Sha


class ChatMessage(_Model):
    role: Literal["system", "user", "assistant"]
    content: Text(200_000)


class ChatParams(_Model):
    """Sampling parameters a runtime honours (OpenAI names). Absent: the runtime's defaults."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=32768)] | None = None
    stop: Annotated[list[Text(256, min_length=1)], Field(max_length=4)] = []
    seed: Annotated[int, Field(ge=0, le=MAX_INT32)] | None = None


RuntimeName = Literal["builtin", "vllm", "llamacpp"]
RuntimeState = Literal["stopped", "starting", "ready", "failed"]


class RuntimeStatus(_Model):
    """One runtime process on the node, serving one active model version over OpenAI HTTP on 127.0.0.1."""

    runtime: RuntimeName
    repo: RepoId
    sha: Sha
    state: RuntimeState
    reason: Str | None = None  # why it failed, or what it is waiting for
    port: Annotated[int, Field(ge=0, le=65535)] | None = None
    tokens_served: NonNegInt = 0  # completion tokens generated since the agent started it
    requests_active: Count = 0  # chats in progress now (least-busy routing)
    restarts: Count = 0
    log_tail: Annotated[list[Text(400)], Field(max_length=50)] = []  # last lines of its log


# ---- agent → server -------------------------------------------------------------------------------


class Hello(_Frame):
    type: Literal["hello"]
    agent_version: ShortStr
    host: HostFacts
    gpus: Annotated[list[GpuInfo], Field(max_length=256)] = []
    gpu_note: Str | None = None
    runtimes: Annotated[list[ShortStr], Field(max_length=16)] = []  # adapters this agent can start
    installed: Annotated[list[ModelRef], Field(max_length=256)] = []
    active: Annotated[list[ModelRef], Field(max_length=16)] = []
    in_flight: Annotated[list[ShortStr], Field(max_length=256)] = []
    serving: Annotated[list[RuntimeStatus], Field(max_length=16)] = []  # one per active version
    site_cache: SiteCacheAdvert | None = None

    @field_validator("gpus")
    @classmethod
    def _distinct_gpus(cls, gpus: list[GpuInfo]) -> list[GpuInfo]:
        return distinct_gpus(gpus)


class CommandEvent(_Frame):
    type: Literal["event"]
    command_id: Text(64)
    state: ShortStr
    bytes_done: NonNegInt | None = None
    bytes_total: NonNegInt | None = None
    bytes_per_second: Annotated[int, Field(ge=0, le=MAX_RATE)] | None = None  # a download's pull rate
    error: Str | None = None
    detail: Text(4096) | None = None  # e.g. a health check's answer


class RuntimeReport(_Frame):
    """Sent on every change of any runtime's state (and its full list, so a lost frame heals)."""

    type: Literal["runtime"]
    serving: Annotated[list[RuntimeStatus], Field(max_length=16)] = []


class ChatDelta(_Frame):
    type: Literal["chat.delta"]
    request_id: ShortStr
    text: Text(65536)


class ChatDone(_Frame):
    type: Literal["chat.done"]
    request_id: ShortStr
    finish_reason: ShortStr = "stop"
    usage: Annotated[dict[ShortStr, NonNegInt], Field(max_length=8)] = {}


class ChatError(_Frame):
    type: Literal["chat.error"]
    request_id: ShortStr
    error: Str


class Pong(_Frame):
    type: Literal["pong"]
    nonce: ShortStr = ""


AgentFrame = Annotated[
    Hello | Metrics | MetricsBatch | CommandEvent | RuntimeReport | ChatDelta | ChatDone | ChatError | Pong
    | CacheReport,
    Field(discriminator="type"),
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
    max_metrics_frame_bytes: Annotated[int, Field(gt=0)] | None = None  # catch-up batches must fit it
    site_cache: SiteCacheOffer | None = None  # this node's site has a cache: pull from it
    # Versions the server reads (e.g. [1, 2]: compact metrics too). None, as from an older server: 1 only.
    protocols: Annotated[list[Annotated[int, Field(ge=1, le=MAX_INT32)]], Field(max_length=16)] | None = None


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
    repo: RepoId
    sha: Sha
    prompt: Text(10_000)
    expect: Text(1000) | None = None  # the answer must contain this, when given
    timeout: Annotated[float, Field(gt=0, le=3600)] = 60


class Chat(_Frame):
    type: Literal["chat"]
    request_id: ShortStr
    repo: RepoId | None = None  # which active version answers; None: the only one
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=512)]
    params: ChatParams = ChatParams()


class ChatCancel(_Frame):
    type: Literal["chat.cancel"]
    request_id: ShortStr


class Control(_Frame):
    """Load shedding: send metrics every ``metrics_interval`` seconds from now on."""

    type: Literal["control"]
    metrics_interval: Annotated[float, Field(gt=0, le=3600)]
    reason: Str = ""


class Ack(_Frame):
    """A ``metrics.batch`` was taken: the agent may forget its points."""

    type: Literal["ack"]
    seq: Count


class Ping(_Frame):
    type: Literal["ping"]
    nonce: ShortStr = ""


class Error(_Frame):
    type: Literal["error"]
    code: ShortStr
    detail: Str


ServerFrame = Annotated[
    Welcome | Deploy | Activate | Rollback | Remove | HealthCheck | Chat | ChatCancel | Control | Ack | Ping | Error
    | Site,
    Field(discriminator="type"),
]

_agent_adapter: TypeAdapter = TypeAdapter(AgentFrame)
_server_adapter: TypeAdapter = TypeAdapter(ServerFrame)


def _describe(error: ValidationError, tagged: bool, compact: bool = False) -> str:
    first = error.errors(include_url=False)[0]
    loc = list(first.get("loc", ()))
    if tagged and loc:
        loc = loc[1:]  # the first element is the discriminator value ("hello"), not a field
    if compact:
        loc = compact_loc(loc)
    # A dict key is the agent's own text: quoted and cut, so the field path stays one readable token.
    parts = ["key" if part == "[key]" else str(part) if isinstance(part, int) or str(part).isidentifier()
             else "[" + re.sub(r"[^\w.-]", "?", str(part)[:40]) + "]" for part in loc]
    field = ".".join(parts) or "frame"
    message = first.get("msg", "invalid")[:200]
    extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{field[:200]}: {message}{extra}"


def _check_size(data: str | bytes, max_bytes: int) -> None:
    if isinstance(data, str):
        if len(data) * 4 <= max_bytes:
            return  # UTF-8 takes at most 4 bytes a character: no need to encode it to know
        size = len(data.encode("utf-8", "surrogatepass"))  # a lone surrogate is refused later, as text
    else:
        size = len(data)
    if size > max_bytes:
        raise FrameError("frame_too_large", f"frame: {size} bytes is over the {max_bytes}-byte limit")


def _parse(data: str | bytes, adapter: TypeAdapter, max_bytes: int, compact: bool = False) -> Any:
    """One pass of pydantic-core over the JSON text for a good frame (json.loads then validate_python
    costs about 2.5 times as much). Any failure is read again by _explain, whose answer is the precise
    FrameError; a frame the fast path takes, _explain would take as the same value (tests hold them equal)."""
    _check_size(data, max_bytes)
    try:
        if compact and looks_compact(data):
            return parse_compact_json(data)
        return adapter.validate_json(data)
    except ValidationError:
        pass
    return _explain(data, adapter, compact)


def _explain(data: str | bytes, adapter: TypeAdapter, compact: bool = False) -> Any:
    """The slow path: json.loads, then the checks one by one, so each bad frame gets its own code."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError("invalid_json", f"frame: not valid JSON ({exc})") from None
    except RecursionError:
        raise FrameError("invalid_json", "frame: nested too deeply") from None
    if not isinstance(raw, dict):
        raise FrameError("invalid_frame", "frame: must be a JSON object with a 'type' field")
    if "type" not in raw:
        raise FrameError("invalid_frame", "type: Field required")
    version = raw.get("v", PROTOCOL_VERSION)
    metrics = compact and raw["type"] == "metrics"
    if metrics and version == COMPACT_METRICS_VERSION:
        try:
            return parse_compact(raw)
        except ValidationError as exc:
            raise FrameError("invalid_frame", _describe(exc, tagged=False, compact=True)) from None
    if version != PROTOCOL_VERSION:
        use = f"{PROTOCOL_VERSION} (or {COMPACT_METRICS_VERSION} for metrics)" if metrics else PROTOCOL_VERSION
        raise FrameError(
            "unsupported_version", f"v: protocol version {str(raw.get('v'))[:20]!r} is not supported; use {use}")
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first.get("type") == "union_tag_invalid":
            raise FrameError("unknown_type", f"type: unknown frame type {str(raw.get('type'))[:40]!r}") from None
        raise FrameError("invalid_frame", _describe(exc, tagged=True)) from None


def parse_agent_frame(data: str | bytes, max_bytes: int = MAX_FRAME_BYTES) -> Any:
    """Validate a frame sent by an agent (``metrics`` in either encoding). Raises FrameError."""
    return _parse(data, _agent_adapter, max_bytes, compact=True)


def parse_server_frame(data: str | bytes, max_bytes: int = 16 * MAX_FRAME_BYTES) -> Any:
    """Validate a frame sent by the server. Raises FrameError."""
    return _parse(data, _server_adapter, max_bytes)


def dump(frame: BaseModel) -> str:
    """Serialise a frame; absent (None) fields are left out, which the receiver reads as null."""
    return frame.model_dump_json(exclude_none=True)


def dump_metrics(metrics: Metrics, protocols: list[int] | None) -> str:
    """A metrics frame in the most compact encoding the server's ``welcome`` listed (v1 if it listed none)."""
    return dump_compact(metrics) if COMPACT_METRICS_VERSION in (protocols or ()) else dump(metrics)
