"""Keeping the live window in step with the inventory: a deleted node leaves it once the delete commits."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from fleet.inventory.models import Node
from fleet.telemetry.live import live_telemetry


def forget_deleted_node(sender: type[Node], instance: Node, **kwargs: Any) -> None:
    node_id = instance.pk
    transaction.on_commit(lambda: live_telemetry.forget(node_id))
