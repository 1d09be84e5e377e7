"""Node helpers for web tests (the cast of users comes from tests/conftest.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from fleet.inventory.models import Gpu, GpuState, Node, NodeCredential
from fleet.lib.secrets import hash_secret, hint, new_secret

GIB = 1024**3


@pytest.fixture
def web_node(db) -> Callable[..., Node]:
    """A node with ``gpus`` present 80 GiB GPUs (and optional extra fields)."""

    def make(name: str, *, gpus: int = 0, **fields) -> Node:
        node = Node.objects.create(name=name, hostname=fields.pop("hostname", f"{name}.lab"), **fields)
        Gpu.objects.bulk_create(
            Gpu(node=node, index=i, uuid=f"GPU-{name}-{i}", name="NVIDIA H100 80GB HBM3",
                memory_total_bytes=80 * GIB, state=GpuState.PRESENT)
            for i in range(gpus)
        )
        return node

    return make


@pytest.fixture
def web_credential(db) -> Callable[[Node], NodeCredential]:
    def make(node: Node) -> NodeCredential:
        secret = new_secret("fns")
        return NodeCredential.objects.create(node=node, secret_hash=hash_secret(secret), hint=hint(secret))

    return make


@pytest.fixture
def agent_loop():
    """An event loop in a thread, for a test's fake agent sockets while Playwright (sync) drives the page."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
