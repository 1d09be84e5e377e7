"""Upstream sync retries transient failures with exponential backoff and a stored next-attempt time, and
downloads only in the engine's hub-sync task: web requests (adding a version, a mirror GET, Retry) only make
blobs due."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.accounts.models import AuditEvent
from fleet.hub import services, sync
from fleet.hub.models import Blob, BlobState, ModelVersion, SyncState
from tests.hub.conftest import sample_files

pytestmark = pytest.mark.django_db(transaction=True)
WEIGHTS = "model.safetensors"


@pytest.fixture
def retry_settings(settings):
    settings.FLEET_HUB_RETRY_BASE = 60.0
    settings.FLEET_HUB_RETRY_MAX = 3600.0
    settings.FLEET_HUB_SYNC_MAX_ATTEMPTS = 5
    return settings


def _engine_round() -> None:
    """One round of the engine's hub-sync task, waited out."""
    sync.tick()
    assert sync.wait_idle(30)
    sync.tick()  # refresh the version states from what the downloads left


def _weights(version: ModelVersion) -> Blob:
    return Blob.objects.get(files__version=version, files__path=WEIGHTS)


def _make_due(blob: Blob) -> None:
    """Time passes (the stored next-attempt time is now in the past)."""
    Blob.objects.filter(pk=blob.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def test_a_transient_upstream_error_is_retried_with_backoff_then_succeeds(
        fake_hub, hub_root, alice, bob, client, retry_settings) -> None:
    fake_hub.add("acme/tiny", sample_files(), revision="main")
    fake_hub.failures[WEIGHTS] = 2
    version = services.add_version(alice, "acme/tiny", "main")

    before = timezone.now()
    _engine_round()
    blob = _weights(version)
    assert blob.state == BlobState.MISSING and blob.attempts == 1 and "503" in blob.error
    first_wait = (blob.next_attempt_at - before).total_seconds()
    assert 55 <= first_wait <= 70
    version.refresh_from_db()
    assert version.sync_state == SyncState.RETRYING and "503" in version.sync_error

    _engine_round()  # not due yet: nothing is fetched again
    assert fake_hub.failed[WEIGHTS] == 1 and _weights(version).attempts == 1

    client.force_login(bob)
    page = client.get(f"/models/versions/{version.pk}/").content.decode()
    assert "data-next-retry" in page and "attempt 2 of 5" in page and "HTTP 503" in page

    _make_due(blob)
    before = timezone.now()
    _engine_round()
    blob = _weights(version)
    assert blob.state == BlobState.MISSING and blob.attempts == 2
    assert 115 <= (blob.next_attempt_at - before).total_seconds() <= 130  # doubled

    _make_due(blob)
    _engine_round()
    blob = _weights(version)
    assert blob.state == BlobState.PRESENT and blob.attempts == 0 and blob.next_attempt_at is None and not blob.error
    version.refresh_from_db()
    assert version.sync_state == SyncState.SYNCED and fake_hub.failed[WEIGHTS] == 2


def test_after_the_last_attempt_it_fails_until_an_operator_retries(
        fake_hub, hub_root, alice, bob, client, make_node, retry_settings) -> None:
    retry_settings.FLEET_HUB_SYNC_MAX_ATTEMPTS = 2
    fake_hub.add("acme/tiny", sample_files(), revision="main")
    fake_hub.failures[WEIGHTS] = 2
    version = services.add_version(alice, "acme/tiny", "main")
    _engine_round()
    _make_due(_weights(version))
    _engine_round()
    blob = _weights(version)
    assert blob.state == BlobState.FAILED and blob.attempts == 2 and blob.next_attempt_at is None
    version.refresh_from_db()
    assert version.sync_state == SyncState.FAILED

    _, secret = make_node()
    response = client.get(f"/hf/acme/tiny/resolve/{version.sha}/{WEIGHTS}", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 502 and "retry the sync" in response.json()["error"]

    client.force_login(bob)
    client.post(f"/models/versions/{version.pk}/retry/")
    blob = _weights(version)
    assert blob.state == BlobState.MISSING and blob.attempts == 0 and blob.next_attempt_at is None
    assert AuditEvent.objects.filter(action="model_version.retry_sync").exists()
    assert fake_hub.failed[WEIGHTS] == 2  # the Retry button itself downloads nothing
    _engine_round()
    assert _weights(version).state == BlobState.PRESENT


def test_web_requests_never_download_they_only_make_blobs_due(
        fake_hub, hub_root, alice, bob, client, make_node, retry_settings) -> None:
    fake_hub.add("acme/tiny", sample_files(), revision="main")
    client.force_login(bob)
    version = services.add_version(bob, "acme/tiny", "main")
    _, secret = make_node()
    url = f"/hf/acme/tiny/resolve/{version.sha}/{WEIGHTS}"
    response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 302  # to the blob server, which follows the engine's download
    assert sync.wait_idle(30)
    assert not fake_hub.fetches, "a web request started a download"
    assert set(Blob.objects.values_list("state", flat=True)) == {BlobState.MISSING}

    # A blob waiting out its backoff: the mirror says when it retries instead of holding the client.
    fake_hub.failures[WEIGHTS] = 1
    _engine_round()
    response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 503 and 50 <= int(response["Retry-After"]) <= 61
    assert "retries in" in response.json()["error"] and response["X-Repo-Commit"] == version.sha
    assert fake_hub.failed[WEIGHTS] == 1 and fake_hub.fetches[("acme/tiny", WEIGHTS)] == 0

    client.post(f"/models/versions/{version.pk}/retry/")  # the operator's nudge: due now
    assert _weights(version).next_attempt_at is None and not fake_hub.fetches[("acme/tiny", WEIGHTS)]
    _engine_round()
    assert _weights(version).state == BlobState.PRESENT
