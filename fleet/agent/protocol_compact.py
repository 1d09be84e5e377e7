"""Protocol v2's compact ``metrics`` frame: the GPUs as columns, one list per field, in ``index``'s order::

    {"type": "metrics", "v": 2, "ts": 1764489600.25,
     "gpus": {"index": [0, 1], "uuid": ["GPU-a", "GPU-b"], "utilization_gpu": [87.0, null], ...},
     "host": {"cpu_percent": 12.5, ...}}

Columns, not rows: each field's name appears once per frame instead of once per GPU (the bulk of a v1
frame), and every column validates inside pydantic-core with GpuSample's own bounded types, generated from
GpuSample below so the two cannot drift. A column left out is its field's default for every GPU (None,
false or []). Each frame stands alone (no delta against an earlier one): a lost frame or a reconnect needs
no resync, and the server's parse stays a pure function of the frame. The server decodes it into the same
``Metrics`` a v1 frame gives; an agent sends it only to a server whose ``welcome`` lists version 2.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, create_model
from pydantic.fields import FieldInfo
from pydantic_core import to_json

from fleet.agent.protocol_base import (
    COMPACT_METRICS_VERSION,
    MAX_GPUS,
    PROTOCOL_VERSION,
    FrameError,
    Timestamp,
    _Model,
)
from fleet.agent.protocol_metrics import GpuSample, HostSample, Metrics, distinct_gpus

REQUIRED = ("index", "uuid")
COLUMNS = tuple(GpuSample.model_fields)
_DEFAULTS = {name: info.get_default(call_default_factory=True) for name, info in GpuSample.model_fields.items()}
# What the agent's own encoder starts every frame with: a frame that does, is tried as v2 first.
_HEAD = f'{{"type":"metrics","v":{COMPACT_METRICS_VERSION},'
_HEAD_BYTES = _HEAD.encode()


def _column(info: FieldInfo) -> Any:
    """GpuSample's field type (its bounds and validators included), as a list with one value per GPU."""
    item = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return Annotated[list[item], Field(max_length=MAX_GPUS)]  # type: ignore[valid-type]


GpuColumns = create_model(  # type: ignore[call-overload]
    "GpuColumns",
    __base__=_Model,
    __doc__="A node's GPUs, one list per GpuSample field.",
    **{name: (_column(info), ... if name in REQUIRED else None) for name, info in GpuSample.model_fields.items()},
)


class CompactMetrics(_Model):
    type: Literal["metrics"]
    v: Literal[2]
    ts: Timestamp
    gpus: GpuColumns = GpuColumns(index=[], uuid=[])  # type: ignore[valid-type]
    host: HostSample | None = None


def looks_compact(data: str | bytes) -> bool:
    """A hint only (the agent's encoder writes this head); a frame that lacks it is still read as v2."""
    return data.startswith(_HEAD) if isinstance(data, str) else data.startswith(_HEAD_BYTES)


_set = object.__setattr__
_ALL_SET = frozenset(COLUMNS)
for _cls in (GpuSample, Metrics):  # what _built relies on: no extra, private or post-init state to set up
    assert _cls.model_config.get("extra") != "allow" and not _cls.__private_attributes__
    assert _cls.__pydantic_post_init__ is None


def _built(cls: type[_Model], values: dict[str, Any]) -> Any:
    """``cls.model_construct(**values)`` without its per-field default and alias lookups (it costs more
    than validating the row again): ``values`` holds every field, each validated already."""
    model = cls.__new__(cls)
    _set(model, "__dict__", values)
    _set(model, "__pydantic_fields_set__", set(values))
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


def expand(frame: CompactMetrics) -> Metrics:
    """The ``Metrics`` a v1 frame with the same samples gives. Every value has passed GpuSample's own field
    types already (the columns), so rows are built without validating them a second time."""
    columns = frame.gpus
    count = len(columns.index)
    present = []
    for name in COLUMNS:
        values = getattr(columns, name)
        if values is None:  # left out: the default for every GPU (a list of its own each, as validation gives)
            default = _DEFAULTS[name]
            values = [[] for _ in range(count)] if default == [] else [default] * count
        elif len(values) != count:
            raise FrameError("invalid_frame", f"gpus.{name}: {len(values)} values for {count} GPUs; "
                                              "each column has one value per GPU, in index's order")
        present.append(values)
    gpus = []
    for row in zip(*present, strict=True):  # _built, inlined: this loop is most of a v2 frame's parse
        gpu = GpuSample.__new__(GpuSample)
        _set(gpu, "__dict__", dict(zip(COLUMNS, row, strict=True)))
        _set(gpu, "__pydantic_fields_set__", set(_ALL_SET))
        _set(gpu, "__pydantic_extra__", None)
        _set(gpu, "__pydantic_private__", None)
        gpus.append(gpu)
    if len(set(columns.index)) != count or len(set(columns.uuid)) != count:
        try:
            distinct_gpus(gpus)
        except ValueError as exc:
            raise FrameError("invalid_frame", f"gpus: Value error, {exc}") from None  # v1's words
    return _built(Metrics, {"v": PROTOCOL_VERSION, "type": "metrics", "ts": frame.ts, "gpus": gpus,
                            "host": frame.host})


def parse_compact_json(data: str | bytes) -> Metrics:
    """Raises ValidationError (the caller says why, precisely) or FrameError."""
    return expand(CompactMetrics.model_validate_json(data))


def parse_compact(raw: dict[str, Any]) -> Metrics:
    """As parse_compact_json, for a frame json.loads has read already."""
    return expand(CompactMetrics.model_validate(raw))


def compact_loc(loc: list[Any]) -> list[Any]:
    """A column error's place as v1 would name it: ("gpus", "power_w", 3) reads "gpus.3.power_w"."""
    if len(loc) >= 3 and loc[0] == "gpus" and isinstance(loc[2], int):
        return [loc[0], loc[2], loc[1], *loc[3:]]
    return loc


def dump_compact(metrics: Metrics) -> str:
    """The v2 encoding of a Metrics frame. A column every GPU has at its default is left out."""
    gpus = metrics.gpus
    columns: dict[str, list[Any]] = {}
    for name in COLUMNS:
        values = [getattr(gpu, name) for gpu in gpus]
        if name in REQUIRED or any(value != _DEFAULTS[name] for value in values):
            if name == "processes":
                values = [[p.model_dump(exclude_none=True) for p in procs] for procs in values]
            columns[name] = values
    frame: dict[str, Any] = {"type": "metrics", "v": COMPACT_METRICS_VERSION, "ts": metrics.ts, "gpus": columns}
    if metrics.host is not None:
        frame["host"] = metrics.host.model_dump(exclude_none=True)
    return to_json(frame).decode()
