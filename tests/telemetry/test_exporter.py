"""`/metrics`: DCGM names, labels and units for a known node, fleet_* series, and access control."""

from __future__ import annotations

import ipaddress
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.accounts.apikeys import create_api_key
from fleet.agent.protocol import Metrics
from fleet.inventory.models import Gpu, NodeStatus
from fleet.telemetry.live import live_telemetry
from tests.telemetry.conftest import gpu, metrics_frame

pytestmark = pytest.mark.django_db
MIB = 1024 * 1024


@pytest.fixture
def known_node(make_node):
    node, _ = make_node("gpu-07", hostname="gpu-07.dc1", status=NodeStatus.ONLINE)
    for index in range(2):
        Gpu.objects.create(node=node, index=index, uuid=f"GPU-{index:08d}", name="NVIDIA H100 80GB HBM3")
    frame = metrics_frame(time.time(), [
        gpu(0, utilization_gpu=55.0, utilization_memory=21.0, memory_used_bytes=1000 * MIB,
            memory_total_bytes=81559 * MIB, temperature_c=64.0, power_w=350.5, sm_clock_mhz=1980,
            energy_j=123456.789, ecc_uncorrected=0, xids=[79]),
        gpu(1, utilization_gpu=3.0, memory_used_bytes=0, memory_total_bytes=81559 * MIB),
    ])
    live_telemetry.ingest(node.pk, Metrics.model_validate(frame), size=1234)
    return node


def scrape(client, **extra) -> dict:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def value(family, **labels) -> float:
    found = [s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family.name, labels, family.samples)
    return found[0]


def test_dcgm_series_and_fleet_series(client, known_node, alice):
    _, key = create_api_key(alice, alice, ["metrics"])
    families = scrape(client, HTTP_AUTHORIZATION=f"Bearer {key}")
    util = families["DCGM_FI_DEV_GPU_UTIL"]
    sample = next(s for s in util.samples if s.labels["gpu"] == "0")
    assert sample.labels == {"gpu": "0", "UUID": "GPU-00000000", "modelName": "NVIDIA H100 80GB HBM3",
                             "Hostname": "gpu-07.dc1", "node": "gpu-07"}
    assert sample.value == 55.0
    assert value(util, gpu="1") == 3.0
    assert value(families["DCGM_FI_DEV_MEM_COPY_UTIL"], gpu="0") == 21.0
    assert value(families["DCGM_FI_DEV_FB_USED"], gpu="0") == 1000.0  # MiB
    assert value(families["DCGM_FI_DEV_FB_FREE"], gpu="0") == 80559.0
    assert value(families["DCGM_FI_DEV_GPU_TEMP"], gpu="0") == 64.0
    assert value(families["DCGM_FI_DEV_POWER_USAGE"], gpu="0") == 350.5  # W
    assert value(families["DCGM_FI_DEV_SM_CLOCK"], gpu="0") == 1980.0  # MHz
    assert value(families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"], gpu="0") == pytest.approx(123456789)  # mJ
    assert value(families["DCGM_FI_DEV_XID_ERRORS"], gpu="0") == 79.0
    assert {s.name for s in families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples} == {
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"}  # no _total suffix: dashboards query the DCGM name

    assert value(families["fleet_nodes"], status="online") == 1
    assert value(families["fleet_nodes"], status="offline") == 0
    assert families["fleet_telemetry_frames"].type == "counter"
    assert value(families["fleet_telemetry_frames"]) == 1
    assert value(families["fleet_telemetry_received_bytes"]) == 1234
    assert value(families["fleet_gpus"], state="present") == 2
    assert "fleet_agent_connections" in families and "fleet_node_last_seen_timestamp_seconds" in families

    only = scrape(client, HTTP_AUTHORIZATION=f"Bearer {key}", QUERY_STRING="name[]=fleet_telemetry_frames_total")
    assert list(only) == ["fleet_telemetry_frames"]


def test_stale_values_are_not_exported(client, known_node, settings):
    settings.FLEET_METRICS_ALLOW = (ipaddress.ip_network("127.0.0.1/32"),)
    live_telemetry.nodes[known_node.pk].ts = time.time() - 3600
    live_telemetry.nodes[known_node.pk].seq += 1
    families = scrape(client)
    assert families["DCGM_FI_DEV_GPU_UTIL"].samples == []


def test_refused_without_key_or_with_wrong_scope_or_address(client, known_node, alice, settings):
    settings.FLEET_METRICS_ALLOW = (ipaddress.ip_network("10.0.0.0/8"),)
    response = client.get("/metrics")  # the test client's address is 127.0.0.1
    assert response.status_code == 401 and b"metrics scope" in response.content
    assert response["WWW-Authenticate"].startswith("Bearer")
    _, hub_key = create_api_key(alice, alice, ["hub"])
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {hub_key}").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer fak_nope").status_code == 401
    assert client.post("/metrics").status_code == 405
    # An allow-listed scraper needs no key.
    families = scrape(client, REMOTE_ADDR="10.1.2.3")
    assert value(families["DCGM_FI_DEV_GPU_UTIL"], gpu="0") == 55.0
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.1").status_code == 401


def test_allow_list_setting_is_validated():
    from fleet.lib.cidrs import address_allowed, env_cidrs
    from fleet.lib.env import ConfigError

    nets = env_cidrs("X", {"X": "10.0.0.0/8, 2001:db8::/32,192.0.2.7"})
    assert address_allowed("10.9.9.9", nets) and address_allowed("::ffff:10.0.0.1", nets)
    assert address_allowed("2001:db8::1", nets) and not address_allowed("192.0.2.8", nets)
    with pytest.raises(ConfigError, match="X entry '10.0.0.1/8'"):
        env_cidrs("X", {"X": "10.0.0.1/8"})
    with pytest.raises(ConfigError, match="not an address"):
        env_cidrs("X", {"X": "intranet"})


def test_dcgm_text_is_what_prometheus_client_writes(make_node, alice, client):
    """The DCGM families are written directly (speed at thousands of nodes): same bytes as generate_latest,
    label values escaped, lost GPUs and unknown values left out."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    from fleet.telemetry.exporter import DCGM_FIELDS, FB_FREE, LABELS, dcgm_text, node_rows

    node, _ = make_node("odd", hostname='rack "7" \\ a', status=NodeStatus.ONLINE)
    Gpu.objects.create(node=node, index=0, uuid="GPU-00000000", name="H100\nSXM")
    frame = metrics_frame(time.time(), [gpu(0, power_w=312.456, xids=[48], fan_percent=None),
                                        {"index": 1, "uuid": "GPU-lost", "lost": True}])
    live_telemetry.ingest(node.pk, Metrics.model_validate(frame))
    expected = CollectorRegistry(auto_describe=False)
    labels = ["0", "GPU-00000000", "H100\nSXM", 'rack "7" \\ a', "odd"]
    families = [GaugeMetricFamily(name, text, labels=LABELS) for name, text, _, _ in DCGM_FIELDS]
    sample = {**gpu(0, power_w=312.456), "last_xid": 48}
    for family, (_, _, field, scale) in zip(families, DCGM_FIELDS, strict=True):
        if sample.get(field) is not None:
            family.add_metric(labels, sample[field] * scale)
    free = GaugeMetricFamily(*FB_FREE, labels=LABELS)
    free.add_metric(labels, (sample["memory_total_bytes"] - sample["memory_used_bytes"]) / MIB)

    class Fixed:
        def collect(self):
            return [*families, free]

    expected.register(Fixed())
    assert dcgm_text(set(), node_rows()) == generate_latest(expected).decode()
    only = dcgm_text({"DCGM_FI_DEV_GPU_TEMP"}, node_rows())
    assert only.startswith("# HELP DCGM_FI_DEV_GPU_TEMP ") and only.count("\n") == 3
