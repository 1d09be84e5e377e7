"""State changes of the inventory: enrollment tokens, enrollment, credentials, node status.

Each function changes the database in one transaction, writes the audit row in it, and publishes to
browsers and agents only after commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from fleet import events
from fleet.accounts import audit
from fleet.inventory import summary
from fleet.inventory.models import EnrollmentToken, Node, NodeCredential, NodeKind, NodeStatus
from fleet.inventory.queries import node_payload, with_gpu_counts
from fleet.lib.errors import FieldError
from fleet.lib.secrets import hash_secret, hint, new_secret

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LABEL_KEY = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,62}$")
MAX_TOKEN_USES = 10_000
MAX_TOKEN_TTL = timedelta(days=30)


class InventoryError(FieldError):
    """A refused inventory request, with the field at fault and an HTTP status for API callers."""


# ---- enrollment tokens ----------------------------------------------------------------------------


def create_enrollment_token(
    actor: Any, *, ttl: timedelta, uses: int = 1, note: str = ""
) -> tuple[EnrollmentToken, str]:
    """Make a token; returns the row and the plaintext, which is never stored and shown only once."""
    if not timedelta(minutes=1) <= ttl <= MAX_TOKEN_TTL:
        raise InventoryError("expires", "expiry must be between 1 minute and 30 days")
    if not 1 <= uses <= MAX_TOKEN_USES:
        raise InventoryError("uses", f"uses must be between 1 and {MAX_TOKEN_USES}")
    plaintext = new_secret("fet")
    with transaction.atomic():
        token = EnrollmentToken.objects.create(
            token_hash=hash_secret(plaintext),
            hint=hint(plaintext),
            note=note[:200],
            expires_at=timezone.now() + ttl,
            uses_left=uses,
            uses_total=uses,
            created_by=actor if getattr(actor, "pk", None) else None,
        )
        audit.record(actor, "enrollment_token.create", token, uses=uses, expires_at=token.expires_at.isoformat())
    return token, plaintext


def revoke_enrollment_token(actor: Any, token: EnrollmentToken) -> bool:
    with transaction.atomic():
        changed = EnrollmentToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if changed:
            audit.record(actor, "enrollment_token.revoke", token)
    return bool(changed)


# ---- enrollment and node credentials ---------------------------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    node: Node
    secret: str


def _clean_labels(labels: Any) -> dict[str, str]:
    if labels in (None, ""):
        return {}
    if not isinstance(labels, dict) or len(labels) > 64:
        raise InventoryError("labels", "labels must be an object of at most 64 key: value strings")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key):
            raise InventoryError("labels", f"label key {key!r} must match {LABEL_KEY.pattern}")
        if not isinstance(value, str) or len(value) > 63:
            raise InventoryError("labels", f"label {key!r} must have a string value of at most 63 characters")
    return dict(labels)


def enroll(
    token_plaintext: str, *, name: str | None, hostname: str, kind: str | None = None, labels: Any = None
) -> Enrollment:
    """Exchange an enrollment token for a new node and its secret (shown to the agent once)."""
    if not isinstance(token_plaintext, str) or not token_plaintext:
        raise InventoryError("token", "token is required")
    if not isinstance(hostname, str) or not hostname or len(hostname) > 255:
        raise InventoryError("hostname", "hostname is required (at most 255 characters)")
    name = name or hostname.split(".")[0]
    if not isinstance(name, str) or not NODE_NAME.match(name):
        raise InventoryError(
            "name", "name must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if kind is not None and kind not in NodeKind.values:
        raise InventoryError("kind", f"kind must be one of {', '.join(NodeKind.values)}")
    clean_labels = _clean_labels(labels)
    now = timezone.now()
    try:
        with transaction.atomic():
            token = EnrollmentToken.objects.filter(token_hash=hash_secret(token_plaintext)).first()
            if token is None:
                raise InventoryError("token", "unknown enrollment token; ask an operator for a new one", 403)
            if token.revoked_at is not None:
                raise InventoryError("token", "this enrollment token was revoked; ask for a new one", 403)
            if token.expires_at <= now:
                raise InventoryError("token", "this enrollment token has expired; ask for a new one", 410)
            # Compare-and-set: two agents racing for the last use cannot both win.
            claimed = EnrollmentToken.objects.filter(pk=token.pk, uses_left__gt=0, revoked_at__isnull=True).update(
                uses_left=F("uses_left") - 1
            )
            if not claimed:
                raise InventoryError("token", "this enrollment token is used up; ask for a new one", 410)
            node = Node.objects.create(
                name=name, hostname=hostname, kind=kind or NodeKind.GPU_SERVER, labels=clean_labels
            )
            secret = new_secret("fns")
            NodeCredential.objects.create(
                node=node, secret_hash=hash_secret(secret), hint=hint(secret), enrollment_token=token
            )
            audit.record(f"agent:{name}", "node.enroll", node, token=token.hint, hostname=hostname)
            _publish_node(node)
    except IntegrityError:
        raise InventoryError(
            "name", f"a node named {name!r} is already enrolled; choose another --name or delete that node", 409
        ) from None
    return Enrollment(node=node, secret=secret)


def authenticate_node(secret: str) -> NodeCredential | None:
    """The active credential for a node secret, or None. Used before any agent frame is read."""
    if not secret:
        return None
    return (
        NodeCredential.objects.select_related("node")
        .filter(secret_hash=hash_secret(secret), revoked_at__isnull=True)
        .first()
    )


def rotate_credential(credential: NodeCredential) -> str:
    """Replace a node's secret with a new one; the old one stops working at once."""
    secret = new_secret("fns")
    now = timezone.now()
    with transaction.atomic():
        changed = NodeCredential.objects.filter(pk=credential.pk, revoked_at__isnull=True).update(
            rotated_at=now, revoked_at=now
        )
        if not changed:
            raise InventoryError("authorization", "this credential is no longer valid", 401)
        NodeCredential.objects.create(node=credential.node, secret_hash=hash_secret(secret), hint=hint(secret))
        audit.record(f"agent:{credential.node.name}", "node_credential.rotate", credential.node)
        # A connection made with the old secret must not outlive it; the agent reconnects with the new one.
        events.publish(events.node_group(credential.node_id), {"type": "agent.revoked", "credential_id": credential.pk})
    return secret


def revoke_credential(actor: Any, credential: NodeCredential) -> bool:
    """Revoke a secret; the node is marked revoked when it has no active secret left, and its agent
    connection is closed."""
    with transaction.atomic():
        changed = NodeCredential.objects.filter(pk=credential.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if not changed:
            return False
        audit.record(actor, "node_credential.revoke", credential.node, credential=credential.hint)
        node = credential.node
        if not node.credentials.filter(revoked_at__isnull=True).exists():
            set_status(node.pk, NodeStatus.REVOKED)
        events.publish(events.node_group(node.pk), {"type": "agent.revoked", "credential_id": credential.pk})
    return True


def delete_node(actor: Any, node: Node) -> None:
    """Delete a node with its GPUs and secrets (audited); its agent connection is closed. Telemetry forgets
    it through the Node post_delete signal."""
    with transaction.atomic():
        audit.record(actor, "node.delete", node, name=node.name, hostname=node.hostname)
        node_id = node.pk
        credentials = list(node.credentials.values_list("pk", flat=True))
        node.delete()
        for credential_id in credentials:  # the connection made with any of its secrets is closed
            events.publish(events.node_group(node_id), {"type": "agent.revoked", "credential_id": credential_id})
        transaction.on_commit(summary.mark_stale)


# ---- node status ------------------------------------------------------------------------------------


def set_status(
    node_id: int,
    status: str,
    *,
    expect: str | None = None,
    last_seen: datetime | None = None,
    seen_before: datetime | None = None,
) -> bool:
    """Compare-and-set a node's status; publishes the change after commit. Returns whether it changed.

    ``seen_before`` makes the update conditional on the node not having been seen since then.
    """
    now = timezone.now()
    query = Node.objects.filter(pk=node_id).exclude(status=status)
    if seen_before is not None:
        query = query.filter(last_seen__lt=seen_before)
    if expect is not None:
        query = query.filter(status=expect)
    if status != NodeStatus.REVOKED:
        query = query.exclude(status=NodeStatus.REVOKED)  # only re-enrollment brings a revoked node back
    fields: dict[str, Any] = {"status": status, "status_changed_at": now}
    if last_seen is not None:
        fields["last_seen"] = last_seen
    changed = query.update(**fields)
    if changed:
        node = Node.objects.get(pk=node_id)
        _publish_node(node)
    return bool(changed)


def bring_online(node_ids: list[int], now: datetime, revive: tuple[str, ...] = (NodeStatus.OFFLINE,)) -> list[int]:
    """``last_seen = now`` for these nodes; those whose status is in ``revive`` become online (published
    after commit). Returns the revived ids. A fixed number of statements whatever the number of nodes: an
    UPDATE, a locked read, and when some come back an UPDATE and one read for the browsers' payloads."""
    if not node_ids:
        return []
    with transaction.atomic():
        # last_seen first: a sweep that runs meanwhile no longer finds these nodes stale
        Node.objects.filter(pk__in=node_ids, status=NodeStatus.ONLINE).update(last_seen=now)
        revived = list(Node.objects.select_for_update().filter(pk__in=node_ids, status__in=revive)
                       .values_list("pk", flat=True))
        if revived:
            Node.objects.filter(pk__in=revived, status__in=revive).update(
                status=NodeStatus.ONLINE, status_changed_at=timezone.now(), last_seen=now)
            _publish_nodes(revived)
    return revived


def _publish_nodes(node_ids: list[int]) -> None:
    """`_publish_node` for many nodes: one read after commit, one hop to the channel layer."""
    def send() -> None:
        messages = []
        for fresh in with_gpu_counts(Node.objects.filter(pk__in=node_ids)):
            payload = {"type": "live.message", "payload": {"kind": "node", "node": node_payload(fresh)}}
            messages += [(events.FLEET_GROUP, payload), (events.node_live_group(fresh.pk), payload)]
        events.publish_many(messages)
        summary.mark_stale()

    transaction.on_commit(send)


def publish_node(node: Node) -> None:
    """Tell browsers a node changed (its GPUs, memory or kind) when its status did not."""
    _publish_node(node)


def _publish_node(node: Node) -> None:
    # Build the payload after commit, so it reflects what was committed, not this snapshot.
    def send() -> None:
        fresh = with_gpu_counts(Node.objects.filter(pk=node.pk)).first()
        payload = {"type": "live.message", "payload": {"kind": "node", "node": node_payload(fresh) if fresh else None}}
        events.publish(events.FLEET_GROUP, payload)
        events.publish(events.node_live_group(node.pk), payload)
        summary.mark_stale()

    transaction.on_commit(send)
