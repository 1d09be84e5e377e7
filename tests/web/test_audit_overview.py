"""Audit log page, overview page, template filters."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from fleet.accounts import audit
from fleet.accounts.models import AuditEvent
from fleet.inventory.models import Gpu, GpuState, NodeKind, NodeStatus
from fleet.inventory.queries import fleet_summary
from fleet.lib.units import format_bytes


@pytest.mark.django_db
def test_audit_log_newest_first_filter_and_constant_queries(client: Client, alice, bob) -> None:
    client.force_login(alice)  # itself audited: user.login
    for i in range(5):
        audit.record(bob, "enrollment_token.create", None, n=i)
    audit.record(alice, "user.create", bob, role="operator")
    client.get(reverse("audit"))
    with CaptureQueriesContext(connection) as small:
        response = client.get(reverse("audit"))
    events = list(response.context["page"])
    assert events[0].action == "user.create" and events[-1].action == "user.login" and len(events) == 7
    page = response.content.decode()
    assert "role=operator" in page and "bob" in page

    filtered = client.get(reverse("audit"), {"action": "user.create"})
    assert [e.action for e in filtered.context["page"]] == ["user.create"]

    AuditEvent.objects.bulk_create(
        AuditEvent(actor=bob, actor_name="bob", action=f"thing.{i % 7}", details={"i": i}) for i in range(300)
    )
    with CaptureQueriesContext(connection) as large:
        response = client.get(reverse("audit"))
    assert len(response.context["page"]) == 50
    assert len(small) == len(large)


@pytest.mark.django_db
def test_audit_unknown_action_filter_is_a_message(client: Client, alice) -> None:
    client.force_login(alice)
    response = client.get(reverse("audit"), {"action": "nope"})
    assert response.status_code == 200
    assert "action: no such action" in response.content.decode()


@pytest.mark.django_db
def test_overview_numbers_carry_summary_keys(client: Client, charlie, web_node) -> None:
    web_node("gpu-01", gpus=8, status=NodeStatus.ONLINE)
    node = web_node("gpu-02", gpus=2, status=NodeStatus.OFFLINE)
    web_node("jetson", gpus=1, kind=NodeKind.EDGE_DEVICE, status=NodeStatus.REVOKED)
    Gpu.objects.filter(node=node, index=1).update(state=GpuState.LOST)
    client.force_login(charlie)
    response = client.get(reverse("overview"))
    page = response.content.decode()
    summary = fleet_summary()

    def flat(prefix: str, value) -> dict[str, object]:
        if isinstance(value, dict):
            out: dict[str, object] = {}
            for key, inner in value.items():
                out.update(flat(f"{prefix}.{key}" if prefix else key, inner))
            return out
        return {prefix: value}

    for key, value in flat("", summary).items():
        shown = format_bytes(value) if key.endswith("memory_bytes") else str(value)
        assert f'data-summary="{key}">{shown}<' in page, key
    assert 'data-summary="gpus.memory_bytes">800.0 GiB<' in page
    assert 'data-live-topics="fleet"' in page
    assert page.index("jetson") < page.index("gpu-01")  # recent changes, newest first


@pytest.mark.django_db
def test_overview_empty_fleet_points_operator_to_enrollment(client: Client, bob) -> None:
    client.force_login(bob)
    page = client.get(reverse("overview")).content.decode()
    assert "No nodes yet" in page and reverse("enrollment") in page
