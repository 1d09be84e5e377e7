"""The audit log: sign-ins, failed sign-ins and sign-outs; targets by their display names; filters by
actor, action and time with a query count that does not grow with the log; a 403 logged as one line."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from fleet.accounts import audit
from fleet.accounts.models import AuditEvent
from fleet.inventory.services import create_enrollment_token

pytestmark = pytest.mark.django_db


def _actions(**filters) -> list[tuple[str, str]]:
    return list(AuditEvent.objects.filter(**filters).order_by("id").values_list("actor_name", "action"))


def test_login_failed_login_and_logout_are_audited(client: Client, charlie, user_password: str) -> None:
    assert client.post(reverse("login"), {"username": "charlie", "password": "wrong password"}).status_code == 200
    assert client.post(reverse("login"), {"username": "nobody", "password": "whatever it is"}).status_code == 200
    assert client.post(reverse("login"), {"username": "charlie", "password": user_password}).status_code == 302
    assert client.post(reverse("logout")).status_code == 302
    assert _actions() == [("charlie", "user.login_failed"), ("nobody", "user.login_failed"),
                          ("charlie", "user.login"), ("charlie", "user.logout")]
    failed = AuditEvent.objects.filter(action="user.login_failed").order_by("id")
    assert failed[0].target_type == "user" and failed[0].target_id == str(charlie.pk)  # the account tried
    assert failed[1].target_type == "" and failed[0].actor_id is None  # a tried name is no proven actor
    assert all(event.details.get("ip") == "127.0.0.1" for event in AuditEvent.objects.all())
    assert "wrong password" not in str(list(AuditEvent.objects.values_list("details", flat=True)))
    login = AuditEvent.objects.get(action="user.login")
    assert login.actor_id == charlie.pk


def test_logging_out_without_a_session_records_nothing(client: Client) -> None:
    assert client.post(reverse("logout")).status_code == 302
    assert not AuditEvent.objects.exists()


def test_admin_sign_in_is_audited_too(client: Client, alice, user_password: str) -> None:
    client.post("/admin/login/", {"username": "alice", "password": user_password})
    assert _actions() == [("alice", "user.login")]


def test_targets_show_display_names(client: Client, alice) -> None:
    token, _ = create_enrollment_token(alice, ttl=timedelta(hours=1), uses=1)
    audit.record(alice, "user.update", alice, role="admin")
    client.force_login(alice)
    page = client.get(reverse("audit")).content.decode()
    assert "enrollmenttoken" not in page
    assert f"enrollment token {token.hint}" in page
    assert '<span class="muted small">user</span> alice' in page


def test_filters_by_actor_action_and_time(client: Client, alice, bob) -> None:
    client.force_login(alice)
    now = timezone.now()
    audit.record(bob, "enrollment_token.create", None)
    audit.record(alice, "user.create", bob)
    old = audit.record(bob, "node.delete", None)
    AuditEvent.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=3))

    def shown(**params) -> list[tuple[str, str]]:
        response = client.get(reverse("audit"), params)
        assert response.status_code == 200
        return [(event.actor_name, event.action) for event in response.context["page"]]

    assert shown(actor="bob") == [("bob", "enrollment_token.create"), ("bob", "node.delete")]
    assert shown(actor="bob", action="node.delete") == [("bob", "node.delete")]
    since = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert ("bob", "node.delete") not in shown(since=since)
    assert shown(actor="bob", until=since) == [("bob", "node.delete")]
    page = client.get(reverse("audit"), {"actor": "bob"}).content.decode()
    assert '<option value="bob" selected>' in page and "Clear" in page

    bad = client.get(reverse("audit"), {"since": "yesterday-ish"})
    assert "since: give a date and time" in bad.content.decode() and len(bad.context["page"]) == 4
    backwards = client.get(reverse("audit"), {"since": "2026-02-01", "until": "2026-01-01"})
    assert "until: must come after From" in backwards.content.decode()
    assert "actor: no such actor" in client.get(reverse("audit"), {"actor": "mallory"}).content.decode()


def test_filtered_log_query_count_does_not_grow(client: Client, alice, bob) -> None:
    client.force_login(alice)
    audit.record(bob, "node.delete", None)
    params = {"actor": "bob", "action": "node.delete", "since": "2000-01-01T00:00"}
    client.get(reverse("audit"), params)
    with CaptureQueriesContext(connection) as small:
        client.get(reverse("audit"), params)
    AuditEvent.objects.bulk_create(
        AuditEvent(actor=bob, actor_name=f"user-{i % 9}", action=f"thing.{i % 7}") for i in range(300))
    AuditEvent.objects.bulk_create(AuditEvent(actor=bob, actor_name="bob", action="node.delete") for _ in range(80))
    with CaptureQueriesContext(connection) as large:
        response = client.get(reverse("audit"), params)
    assert len(response.context["page"]) == 50
    assert len(small) == len(large)


def test_an_ordinary_403_is_one_log_line(client: Client, charlie, caplog) -> None:
    client.force_login(charlie)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get(reverse("users")).status_code == 403
    [record] = [r for r in caplog.records if r.name == "django.request"]
    assert record.exc_info is None and record.exc_text is None
    assert record.getMessage() == "Forbidden (Permission denied): /users/ (This page needs the admin role.)"
