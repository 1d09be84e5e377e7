"""`fleet_gateway_*` series for /metrics: requests, tokens, errors and latency per model.

The gateway (`fleet.playground.gateway`) records one finished request at a time; every server process
adds into the same totals (a Redis hash in production, this process's dict in the embedded default),
so any process answers a scrape for all of them. One write per request, none per token.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from fleet.telemetry.store import RedisStore, get_store

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNKNOWN_MODEL = "_unknown"  # requests for names the fleet does not know: one label value, not one per typo
SEP = "|"

_local: dict[str, float] = defaultdict(float)


def increments(model: str, status: int, *, error: str | None = None, prompt_tokens: int = 0,
               completion_tokens: int = 0, duration_s: float | None = None,
               ttft_s: float | None = None) -> dict[str, float]:
    """The counter increments one finished request adds (field name → amount)."""
    model = model.replace(SEP, "_") or UNKNOWN_MODEL
    fields: dict[str, float] = {SEP.join(("req", model, str(status))): 1}
    if error:
        fields[SEP.join(("err", model, error))] = 1
    if prompt_tokens:
        fields[SEP.join(("tok", model, "prompt"))] = prompt_tokens
    if completion_tokens:
        fields[SEP.join(("tok", model, "completion"))] = completion_tokens
    for name, value, buckets in (("dur", duration_s, DURATION_BUCKETS), ("ttft", ttft_s, TTFT_BUCKETS)):
        if value is None:
            continue
        fields[SEP.join((name, model, "sum"))] = value
        fields[SEP.join((name, model, "count"))] = 1
        for bound in buckets:
            if value <= bound:
                fields[SEP.join((name, model, f"{bound:g}"))] = 1
    return fields


async def record(model: str, status: int, **values) -> None:
    """Add one finished gateway request to the shared totals."""
    fields = increments(model, status, **values)
    store = get_store()
    if isinstance(store, RedisStore):
        pipe = store.aio.pipeline(transaction=False)
        for field, amount in fields.items():
            pipe.hincrbyfloat(store.key("gateway"), field, amount)
        await pipe.execute()
        return
    for field, amount in fields.items():
        _local[field] += amount


def totals() -> dict[str, float]:
    store = get_store()
    if isinstance(store, RedisStore):
        return {field: float(value) for field, value in store.sync.hgetall(store.key("gateway")).items()}
    return dict(_local)


def families() -> Iterator[Metric]:
    values = totals()
    requests = CounterMetricFamily("fleet_gateway_requests", "Gateway chat completion requests by model and HTTP "
                                   "status.", labels=["model", "code"])
    errors = CounterMetricFamily("fleet_gateway_errors", "Gateway requests that failed, by model and error type.",
                                 labels=["model", "type"])
    tokens = CounterMetricFamily("fleet_gateway_tokens", "Tokens through the gateway by model and kind "
                                 "(prompt or completion).", labels=["model", "kind"])
    histograms: dict[str, dict[str, dict[str, float]]] = {"dur": defaultdict(dict), "ttft": defaultdict(dict)}
    for field in sorted(values):
        parts = field.split(SEP)
        if len(parts) != 3:
            continue
        kind, model, rest = parts
        if kind == "req":
            requests.add_metric([model, rest], values[field])
        elif kind == "err":
            errors.add_metric([model, rest], values[field])
        elif kind == "tok":
            tokens.add_metric([model, rest], values[field])
        elif kind in histograms:
            histograms[kind][model][rest] = values[field]
    yield requests
    yield errors
    yield tokens
    for kind, name, text, bounds in (
        ("dur", "fleet_gateway_request_duration_seconds", "Gateway request duration, start to last byte.",
         DURATION_BUCKETS),
        ("ttft", "fleet_gateway_time_to_first_token_seconds", "Gateway time from request to first token.",
         TTFT_BUCKETS),
    ):
        family = HistogramMetricFamily(name, text, labels=["model"])
        for model, fields in sorted(histograms[kind].items()):
            buckets = [(f"{bound:g}", fields.get(f"{bound:g}", 0.0)) for bound in bounds]
            buckets.append(("+Inf", fields.get("count", 0.0)))
            family.add_metric([model], buckets, sum_value=fields.get("sum", 0.0))
        yield family
