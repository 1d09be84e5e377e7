"""Model commands for one node (deploy, activate, remove, roll back): written first, sent to the agent after
commit through the node's group, re-sent after a reconnect until the agent reports a final state.

The AgentConsumer calls `frames_to_send`, `record_event` and `record_inventory`; nothing here imports it.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet import events
from fleet.accounts import audit
from fleet.agent import protocol
from fleet.hub.models import (
    MANUAL_COMMAND_KINDS,
    ApprovalState,
    CommandKind,
    CommandState,
    InstallState,
    ModelVersion,
    NodeCommand,
    NodeInstall,
)
from fleet.inventory.models import Node, NodeStatus
from fleet.lib.errors import FieldError

log = logging.getLogger(__name__)
PROGRESS_WRITE_EVERY = 1.0
AGENT_STATES = {"accepted": CommandState.SENT, **{state.value: state for state in CommandState}}
_last_progress: dict[str, float] = {}


def _final_states(command: NodeCommand) -> set[str]:
    if command.kind == CommandKind.DEPLOY:
        return {CommandState.FAILED, CommandState.ACTIVE if command.activate else CommandState.STAGED}
    if command.kind == CommandKind.REMOVE:
        return {CommandState.FAILED, CommandState.REMOVED}
    if command.kind == CommandKind.HEALTHCHECK:
        return {CommandState.FAILED, CommandState.SUCCEEDED}
    return {CommandState.FAILED, CommandState.ACTIVE}


def create(actor: Any, node: Node, kind: str, version: ModelVersion | None = None, *, activate: bool = False,
           repo: str = "") -> NodeCommand:
    """Queue a command for ``node``; the agent gets it after commit (now if connected, else on reconnect)."""
    if kind not in MANUAL_COMMAND_KINDS:
        raise FieldError("kind", f"kind must be one of {', '.join(MANUAL_COMMAND_KINDS)}")
    if node.status == NodeStatus.REVOKED:
        raise FieldError("node", f"{node.name} is revoked; it can no longer receive commands")
    if kind != CommandKind.ROLLBACK:
        if version is None:
            raise FieldError("version", "choose a model version")
        if version.approval != ApprovalState.APPROVED:
            raise FieldError("version", f"{version} is not approved; an admin must approve it first")
        repo = version.model.repo_id
    installed = NodeInstall.objects.filter(node=node, repo=repo, sha=version.sha if version else "").first()
    if kind == CommandKind.ACTIVATE and installed is None:
        raise FieldError("version", f"{version} is not staged on {node.name}; deploy it there first")
    if kind == CommandKind.REMOVE and installed is not None and installed.state == InstallState.ACTIVE:
        raise FieldError("version", f"{version} is active on {node.name}; activate another version first")
    busy = NodeCommand.objects.filter(node=node, repo=repo, sha=version.sha if version else "", kind=kind,
                                      finished_at__isnull=True).first()
    if busy is not None:
        raise FieldError("version", f"a {kind} of {repo} to {node.name} is already in progress "
                                      f"({busy.get_state_display().lower()})")
    with transaction.atomic():
        command = NodeCommand.objects.create(
            command_id=f"cmd_{secrets.token_hex(12)}", node=node, kind=kind, version=version, repo=repo,
            sha=version.sha if version else "", activate=activate and kind == CommandKind.DEPLOY,
            bytes_total=version.total_size if version and kind == CommandKind.DEPLOY else 0,
            created_by=actor if getattr(actor, "pk", None) else None,
        )
        audit.record(actor, f"model.{kind}", node, repo=repo, sha=command.sha, command=command.command_id,
                     **({"activate": True} if command.activate else {}))
        events.publish(events.node_group(node.pk), {"type": "agent.command", "command_id": command.command_id})
    return command


def frame_for(command: NodeCommand) -> protocol.BaseModel:
    common = {"command_id": command.command_id, "repo": command.repo}
    if command.kind == CommandKind.DEPLOY:
        manifest = [file.manifest_entry() for file in command.version.files.all()] if command.version else []
        return protocol.Deploy(type="deploy", sha=command.sha, manifest=manifest, activate=command.activate, **common)
    if command.kind == CommandKind.ACTIVATE:
        return protocol.Activate(type="activate", sha=command.sha, **common)
    if command.kind == CommandKind.REMOVE:
        return protocol.Remove(type="remove", sha=command.sha, **common)
    if command.kind == CommandKind.HEALTHCHECK:
        return protocol.HealthCheck(type="healthcheck", sha=command.sha, prompt=command.prompt,
                                    expect=command.expect or None, timeout=command.timeout, **common)
    return protocol.Rollback(type="rollback", **common)


# Both read the few unfinished commands of the whole fleet (finished_at is indexed) and keep the asked nodes in
# Python: a process's thousands of node ids in an IN list cost Django more CPU to prepare than the query itself.


def nodes_with_pending(node_ids: list[int]) -> set[int]:
    """Which of these nodes have commands never sent yet (one query for a whole server process)."""
    if not node_ids:
        return set()
    return set(node_ids) & set(NodeCommand.objects.filter(state=CommandState.PENDING, finished_at__isnull=True)
                               .order_by().values_list("node_id", flat=True).distinct())


def nodes_with_unfinished(node_ids: list[int]) -> set[int]:
    """Which of these nodes have commands not finished (sent or not): those a reconnect re-sends. One query."""
    if not node_ids:
        return set()
    return set(node_ids) & set(NodeCommand.objects.filter(finished_at__isnull=True).order_by()
                               .values_list("node_id", flat=True).distinct())


def frames_to_send(node_id: int, command_id: str | None = None, pending_only: bool = False
                   ) -> list[protocol.BaseModel]:
    """The frames of this node's unfinished commands (one, with ``command_id``; only never-sent ones, with
    ``pending_only``), marked as sent."""
    query = NodeCommand.objects.filter(node_id=node_id, finished_at__isnull=True).select_related("version")
    if pending_only:
        query = query.filter(state=CommandState.PENDING)
    if command_id:
        query = query.filter(command_id=command_id)
    commands = list(query.order_by("created_at", "id"))
    frames = []
    for command in commands:
        if command.kind == CommandKind.DEPLOY and command.version is None:
            _finish(command, CommandState.FAILED, "the version was deleted before the node got it")
            continue
        frames.append(frame_for(command))
    NodeCommand.objects.filter(pk__in=[c.pk for c in commands], state=CommandState.PENDING).update(
        state=CommandState.SENT, sent_at=timezone.now())
    return frames


def _finish(command: NodeCommand, state: str, error: str = "") -> None:
    NodeCommand.objects.filter(pk=command.pk, finished_at__isnull=True).update(
        state=state, error=error[:500], finished_at=timezone.now())


def record_event(node_id: int, event: protocol.CommandEvent) -> NodeCommand | None:
    """Apply an agent's progress/result report to its command (only commands of that node)."""
    state = AGENT_STATES.get(event.state)
    if state is None:
        log.warning("node %s reported unknown state %r for %s", node_id, event.state, event.command_id)
        return None
    try:  # the node comes along for the audit row; no ordering: command_id is unique
        command = NodeCommand.objects.select_related("node").get(node_id=node_id, command_id=event.command_id)
    except NodeCommand.DoesNotExist:
        return None
    final = state in _final_states(command)
    if final and command.finished_at is not None and command.state == state:
        return command  # a result resent after a reconnect: recorded once (a replayed "active" must not
        # flip the node's installs back after it moved on)
    now = time.monotonic()
    if not final and state == command.state and now - _last_progress.get(command.command_id, 0) < PROGRESS_WRITE_EVERY:
        return command  # a progress tick: at most one write per second per command
    _last_progress[command.command_id] = now
    if final:
        _last_progress.pop(command.command_id, None)
    error = (event.error or "")[:500] if state == CommandState.FAILED else ""
    # updated_at by hand (.update() skips auto_now): the rollout driver tells fresh download progress by it
    fields: dict[str, Any] = {"state": state, "error": error, "updated_at": timezone.now()}
    if event.bytes_done is not None:
        fields["bytes_done"] = event.bytes_done
    if event.bytes_total:
        fields["bytes_total"] = event.bytes_total
    if event.bytes_per_second is not None:
        fields["bytes_per_second"] = event.bytes_per_second
    if event.detail is not None and final:
        fields["detail"] = event.detail
    with transaction.atomic():
        query = NodeCommand.objects.filter(pk=command.pk)
        if not final:
            query = query.filter(finished_at__isnull=True)  # a late progress frame never reopens a result
        if final:
            fields["finished_at"] = command.finished_at or timezone.now()
        if not query.update(**fields):
            return command
        if final and state != CommandState.FAILED and command.kind != CommandKind.HEALTHCHECK:
            _apply_install(command, state)
        if final:
            audit.record(f"agent:{command.node.name}", f"model.{command.kind}.{state}", command.node,
                         repo=command.repo, sha=command.sha, command=command.command_id,
                         **({"error": fields["error"]} if fields["error"] else {}))
        events.publish(events.node_live_group(node_id), {"type": "live.message", "payload": {"kind": "models"}})
    for name, value in fields.items():  # what the row now holds: no re-read
        setattr(command, name, value)
    return command


def _apply_install(command: NodeCommand, state: str) -> None:
    node_id, repo, sha = command.node_id, command.repo, command.sha
    # the installs now differ from what the last stored hello said: the next hello is stored in full
    Node.objects.filter(pk=node_id).update(hello_digest="")
    if state == CommandState.REMOVED:
        NodeInstall.objects.filter(node_id=node_id, repo=repo, sha=sha).delete()
        return
    if not sha:  # a rollback: which version became active arrives with the agent's next hello
        return
    if state == CommandState.ACTIVE:
        NodeInstall.objects.filter(node_id=node_id, repo=repo, state=InstallState.ACTIVE).exclude(sha=sha).update(
            state=InstallState.STAGED)
    install = NodeInstall(node_id=node_id, repo=repo, sha=sha, version_id=command.version_id,
                          state=InstallState.ACTIVE if state == CommandState.ACTIVE else InstallState.STAGED)
    NodeInstall.objects.bulk_create([install], update_conflicts=True, unique_fields=["node", "repo", "sha"],
                                    update_fields=["state", "version", "updated_at"])  # one upsert


def record_inventory(node_id: int, installed: list[protocol.ModelRef], active: list[protocol.ModelRef]) -> bool:
    """What the agent's hello says it holds replaces what we knew (call inside the hello transaction).
    Returns whether every row is linked to a known version (else a later hello may link it, once imported)."""
    reported = {(ref.repo, ref.sha): InstallState.STAGED for ref in installed}
    reported.update({(ref.repo, ref.sha): InstallState.ACTIVE for ref in active})
    existing = {(row.repo, row.sha): row for row in NodeInstall.objects.filter(node_id=node_id)}
    stale = [row.pk for key, row in existing.items() if key not in reported]
    if stale:
        NodeInstall.objects.filter(pk__in=stale).delete()
    versions = {(v.model.repo_id, v.sha): v for v in ModelVersion.objects.select_related("model").filter(
        sha__in=[sha for _, sha in reported])}
    for (repo, sha), state in reported.items():
        row = existing.get((repo, sha))
        if row is None:
            NodeInstall.objects.create(node_id=node_id, repo=repo, sha=sha, state=state,
                                       version=versions.get((repo, sha)))
        elif row.state != state or row.version_id is None and (repo, sha) in versions:
            row.state = state
            row.version = versions.get((repo, sha))
            row.save(update_fields=["state", "version", "updated_at"])
    return all(key in versions for key in reported)


def mirror_url(scope: dict) -> str:
    """The /hf URL a node should use: FLEET_PUBLIC_URL, else the host it connected to."""
    from django.conf import settings

    if settings.FLEET_PUBLIC_URL:
        return settings.FLEET_PUBLIC_URL + "/hf"
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    return f"{scheme}://{host}/hf"



def ensure(actor: Any, items: list[tuple[Node | int, str, ModelVersion, str]], *, activate: bool = False,
           healthcheck: dict[str, Any] | None = None) -> list[str]:
    """Queue commands under stable ids chosen by the caller (rollouts, deployments), each ``(node, kind,
    version, command_id)``: an id that exists already is left alone, so a resent command is never done
    twice. Returns the ids it created; ``activate`` makes deploy commands activate once staged;
    ``healthcheck`` (``prompt``, ``expect``, ``timeout``) is what health-check commands ask. The caller
    orders the steps (stage before activate), so the checks of `create` that guard a person's clicks do not
    apply. Two queries for any number of commands; call it inside the caller's transaction (agents are
    told after commit)."""
    allowed = (CommandKind.DEPLOY, CommandKind.ACTIVATE, CommandKind.HEALTHCHECK)
    if any(kind not in allowed for _, kind, _, _ in items):
        raise FieldError("kind", "rollouts queue deploy, activate and health-check commands only")
    check = healthcheck or {}
    if any(kind == CommandKind.HEALTHCHECK for _, kind, _, _ in items) and not check.get("prompt"):
        raise FieldError("healthcheck", "a health check needs a prompt")
    existing = set(NodeCommand.objects.filter(command_id__in=[item[3] for item in items])
                   .values_list("command_id", flat=True))
    user = actor if getattr(actor, "pk", None) else None
    new, seen = [], set(existing)
    for node, kind, version, command_id in items:
        if command_id in seen:
            continue
        seen.add(command_id)
        probe = kind == CommandKind.HEALTHCHECK
        new.append(NodeCommand(
            command_id=command_id, node_id=getattr(node, "pk", node), kind=kind, version=version,
            repo=version.model.repo_id, sha=version.sha, created_by=user, activate=activate and kind == "deploy",
            bytes_total=version.total_size if kind == CommandKind.DEPLOY else 0,
            prompt=check["prompt"] if probe else "", expect=(check.get("expect") or "") if probe else "",
            timeout=float(check.get("timeout") or 60.0) if probe else 60.0))
    NodeCommand.objects.bulk_create(new)
    # logged by the caller (RolloutEvent rows); the operator's act is in the audit log
    events.publish_many([(events.node_group(command.node_id),
                          {"type": "agent.command", "command_id": command.command_id}) for command in new])
    return [command.command_id for command in new]
