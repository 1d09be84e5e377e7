"""Every page is behind the right role: anonymous → login, outsider → 403, role ladder enforced."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import URLPattern, reverse

from fleet.web import urls as web_urls

GET_PAGES = {
    "viewer": ["overview", "node-list", "node-states"],
    "operator": ["enrollment"],
    "admin": ["users", "audit"],
}


def _all_get_urls(node_pk: int) -> list[str]:
    urls = [reverse(name) for names in GET_PAGES.values() for name in names]
    return [*urls, reverse("node-detail", args=[node_pk])]


@pytest.mark.django_db
def test_anonymous_get_of_every_page_redirects_to_login(client: Client, web_node) -> None:
    node = web_node("n1")
    for url in _all_get_urls(node.pk):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login") + "?next="), url


@pytest.mark.django_db
def test_anonymous_posts_redirect_to_login_and_change_nothing(client: Client, web_node) -> None:
    from fleet.inventory.models import EnrollmentToken

    node = web_node("n1")
    for url in [reverse("enrollment"), reverse("users"), reverse("token-revoke", args=[1]),
                reverse("credential-revoke", args=[1]), reverse("user-update", args=[node.pk])]:
        response = client.post(url, {"expires": "1h", "uses": 1})
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url
    assert not EnrollmentToken.objects.exists()


@pytest.mark.django_db
def test_outsider_gets_friendly_403_everywhere(client: Client, outsider, web_node) -> None:
    node = web_node("n1")
    client.force_login(outsider)
    for url in _all_get_urls(node.pk):
        response = client.get(url)
        assert response.status_code == 403, url
    response = client.get(reverse("overview"))
    assert b"no Fleet role yet" in response.content


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fixture", "allowed"),
    [("charlie", {"viewer"}), ("bob", {"viewer", "operator"}), ("alice", {"viewer", "operator", "admin"})],
)
def test_role_ladder(client: Client, request, fixture: str, allowed: set[str]) -> None:
    client.force_login(request.getfixturevalue(fixture))
    for role, names in GET_PAGES.items():
        for name in names:
            response = client.get(reverse(name))
            assert response.status_code == (200 if role in allowed else 403), (fixture, name)


@pytest.mark.django_db
def test_nav_shows_only_what_the_role_may_use(client: Client, charlie, alice) -> None:
    client.force_login(charlie)
    page = client.get(reverse("overview")).content.decode()
    assert reverse("enrollment") not in page and reverse("users") not in page and "/admin/" not in page
    assert "charlie" in page and "viewer" in page and reverse("logout") in page
    client.force_login(alice)
    page = client.get(reverse("overview")).content.decode()
    assert reverse("enrollment") in page and reverse("users") in page and reverse("audit") in page
    assert 'href="/admin/"' in page


def test_every_web_url_is_protected_by_a_role() -> None:
    for pattern in web_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        if pattern.name == "static-file":
            assert getattr(pattern.callback, "public", False)
            continue
        assert getattr(pattern.callback, "required_role", None), pattern.name


@pytest.mark.django_db
def test_post_without_csrf_token_is_refused(bob) -> None:
    from fleet.inventory.models import EnrollmentToken

    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    response = client.post(reverse("enrollment"), {"expires": "1h", "uses": 1})
    assert response.status_code == 403
    assert b"This form has expired" in response.content
    assert not EnrollmentToken.objects.exists()


@pytest.mark.django_db
def test_login_page_and_logout(client: Client, charlie, user_password: str) -> None:
    page = client.get(reverse("login"))
    assert page.status_code == 200 and b"Sign in to Fleet" in page.content
    response = client.post(reverse("login"), {"username": "charlie", "password": user_password})
    assert response.status_code == 302 and response["Location"] == reverse("overview")
    assert client.get(reverse("overview")).status_code == 200
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("overview")).status_code == 302


@pytest.mark.django_db
def test_static_files_are_served_and_confined(client: Client) -> None:
    response = client.get("/static/fleet/fleet.css")
    assert response.status_code == 200
    assert b"--bg" in b"".join(response.streaming_content)
    assert client.get("/static/fleet/live.js").status_code == 200
    assert client.get("/static/../fleet/settings.py").status_code in (400, 404)
    assert client.get("/static/%2e%2e/fleet/settings.py").status_code in (400, 404)
    assert client.get("/static/fleet/nope.css").status_code == 404
