"""The version page's "Nodes" box: which nodes hold this version (staged or active), which are getting it
now, each node's status, and Activate where it can work. The open page redraws the box from
``versions/<pk>/nodes/`` whenever a command beside it changes state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from fleet.accounts.permissions import viewer_required
from fleet.hub.models import CommandKind, InstallState, ModelVersion, NodeCommand, NodeInstall
from fleet.hub.reach import unreachable_reason


@dataclass
class NodeEntry:
    node: Any
    install: NodeInstall | None = None
    command: NodeCommand | None = None  # the unfinished deploy or activate of this version, if any
    reason: str | None = None  # why Activate cannot work now

    @property
    def can_activate(self) -> bool:
        return (self.install is not None and self.install.state == InstallState.STAGED
                and (self.command is None or self.command.kind != CommandKind.ACTIVATE))


def version_nodes_context(version: ModelVersion, user: Any) -> dict[str, Any]:
    """Two queries: the installs of this version and its unfinished deploy/activate commands."""
    entries: dict[int, NodeEntry] = {}
    for install in version.installs.select_related("node").order_by("-state", "node__name"):
        entries[install.node_id] = NodeEntry(node=install.node, install=install)
    running = (NodeCommand.objects.filter(version=version, finished_at__isnull=True,
                                          kind__in=[CommandKind.DEPLOY, CommandKind.ACTIVATE])
               .select_related("node").order_by("created_at"))
    for command in running:
        entry = entries.setdefault(command.node_id, NodeEntry(node=command.node))
        entry.command = command
    for entry in entries.values():
        entry.reason = unreachable_reason(entry.node)
    ordered = sorted(entries.values(), key=lambda e: (e.install is None, e.node.name))
    operator = bool(user.is_authenticated and user.has_role("operator"))
    return {"version": version, "node_entries": ordered, "operator": operator,
            "holding": sum(1 for e in ordered if e.install is not None)}


@viewer_required
def version_nodes(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=pk)
    return render(request, "hub/_version_nodes.html", version_nodes_context(version, request.user))
