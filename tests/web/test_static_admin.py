"""Static files in the embedded default: the Django admin's (so the admin is styled) and Fleet's, served by
WhiteNoise through an async-capable middleware (a sync one would push every async view through threads)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import AsyncClient, Client
from django.utils.module_loading import import_string


def test_every_middleware_runs_async_under_daphne() -> None:
    sync_only = [path for path in settings.MIDDLEWARE if not getattr(import_string(path), "async_capable", False)]
    assert not sync_only


@pytest.mark.django_db
def test_admin_stylesheet_and_fleet_css_are_served(client: Client) -> None:
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert b"--body-bg" in b"".join(response.streaming_content)
    assert "max-age=300" in response["Cache-Control"]
    assert client.get("/static/fleet/fleet.css").status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_static_files_over_the_async_path() -> None:
    client = AsyncClient()
    response = await client.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert (await client.get("/static/admin/css/nope.css")).status_code == 404
