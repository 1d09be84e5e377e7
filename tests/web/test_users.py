"""User management: admin only, Django password validation, self-protection, audit rows."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from fleet.accounts.models import AuditEvent, User

STRONG = "correct-horse-battery-9"


@pytest.mark.django_db
def test_operator_cannot_manage_users(client: Client, bob, charlie) -> None:
    client.force_login(bob)
    assert client.get(reverse("users")).status_code == 403
    data = {"username": "mallory", "role": "admin", "password": STRONG, "password_confirm": STRONG}
    assert client.post(reverse("users"), data).status_code == 403
    update = client.post(reverse("user-update", args=[charlie.pk]), {"role": "admin", "is_active": "on"})
    assert update.status_code == 403
    assert not User.objects.filter(username="mallory").exists()
    charlie.refresh_from_db()
    assert charlie.role == "viewer"
    assert not AuditEvent.objects.exclude(action="user.login").exists()  # force_login is a sign-in


@pytest.mark.django_db
@pytest.mark.parametrize(("role", "staff"), [("operator", False), ("viewer", False), ("admin", True)])
def test_admin_creates_user_with_role_and_audit(client: Client, alice, role: str, staff: bool) -> None:
    client.force_login(alice)
    data = {"username": "erin", "role": role, "password": STRONG, "password_confirm": STRONG}
    response = client.post(reverse("users"), data, follow=True)
    assert response.redirect_chain[-1][0] == reverse("users")
    erin = User.objects.get(username="erin")
    assert erin.role == role and erin.check_password(STRONG) and erin.is_active
    assert erin.is_staff is staff and erin.is_superuser is staff
    event = AuditEvent.objects.get(action="user.create")
    assert event.actor == alice and event.target_id == str(erin.pk) and event.details == {"role": role}
    assert "User erin created" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "field", "text"),
    [
        ({"username": "erin", "role": "viewer", "password": "short1", "password_confirm": "short1"},
         "password", "too short"),
        ({"username": "erin", "role": "viewer", "password": "password123", "password_confirm": "password123"},
         "password", "too common"),
        ({"username": "erin", "role": "viewer", "password": STRONG, "password_confirm": STRONG + "x"},
         "password_confirm", "differ"),
        ({"username": "alice", "role": "viewer", "password": STRONG, "password_confirm": STRONG},
         "username", "already exists"),
        ({"username": "bad name!", "role": "viewer", "password": STRONG, "password_confirm": STRONG},
         "username", "valid username"),
        ({"username": "erin", "role": "god", "password": STRONG, "password_confirm": STRONG},
         "role", "valid choice"),
    ],
)
def test_create_user_validation_names_the_field(client: Client, alice, data, field, text) -> None:
    client.force_login(alice)
    response = client.post(reverse("users"), data)
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and text in " ".join(errors[field])
    assert f'<span class="field-error">{field}: ' in response.content.decode()
    assert User.objects.count() == 1
    assert not AuditEvent.objects.exclude(action="user.login").exists()  # force_login is a sign-in


@pytest.mark.django_db
def test_admin_changes_role_and_deactivates(client: Client, alice, bob) -> None:
    client.force_login(alice)
    url = reverse("user-update", args=[bob.pk])
    response = client.post(url, {"role": "admin", "is_active": "on"}, follow=True)
    bob.refresh_from_db()
    assert bob.role == "admin" and bob.is_staff and bob.is_superuser
    event = AuditEvent.objects.get(action="user.update")
    assert event.actor == alice and event.details == {"role": ["operator", "admin"]}
    assert "User bob updated" in response.content.decode()

    client.post(url, {"role": "viewer"})  # no is_active → deactivate
    bob.refresh_from_db()
    assert bob.role == "viewer" and not bob.is_active and not bob.is_staff and not bob.is_superuser
    last = AuditEvent.objects.filter(action="user.update").first()
    assert last.details == {"role": ["admin", "viewer"], "is_active": [True, False]}
    # A deactivated user is logged out and refused.
    other = Client()
    other.force_login(bob)
    assert other.get(reverse("overview")).status_code == 302


@pytest.mark.django_db
def test_unchanged_update_writes_no_audit(client: Client, alice, bob) -> None:
    client.force_login(alice)
    response = client.post(reverse("user-update", args=[bob.pk]), {"role": "operator", "is_active": "on"},
                           follow=True)
    assert "Nothing changed" in response.content.decode()
    assert not AuditEvent.objects.exclude(action="user.login").exists()  # force_login is a sign-in


@pytest.mark.django_db
@pytest.mark.parametrize("data", [{"role": "operator", "is_active": "on"}, {"role": "admin"}, {"role": ""}])
def test_admin_cannot_demote_or_deactivate_themself(client: Client, alice, data) -> None:
    client.force_login(alice)
    response = client.post(reverse("user-update", args=[alice.pk]), data, follow=True)
    assert "cannot remove your own admin role or deactivate yourself" in response.content.decode()
    alice.refresh_from_db()
    assert alice.role == "admin" and alice.is_active and alice.is_superuser
    assert not AuditEvent.objects.exclude(action="user.login").exists()  # force_login is a sign-in


@pytest.mark.django_db
def test_users_page_lists_users_with_roles(client: Client, alice, bob, charlie, outsider) -> None:
    client.force_login(alice)
    page = client.get(reverse("users")).content.decode()
    for account, role in [(alice, "admin"), (bob, "operator"), (charlie, "viewer")]:
        row = page[page.index(f'data-user-id="{account.pk}"'):]
        row = row[: row.index("</tr>")]
        assert account.username in row and f'<span class="role role-{role}">{role}</span>' in row
    assert "no access" in page
