"""What the node page shows of the hub: the versions a node holds, its recent model commands, the deploy form."""

from __future__ import annotations

from typing import Any

from fleet.hub.forms import DeployForm
from fleet.hub.models import NodeCommand, NodeInstall
from fleet.hub.reach import unreachable_reason

RECENT_COMMANDS = 10


def node_models_context(node: Any, user: Any) -> dict[str, Any]:
    """Context for ``hub/_node_models.html`` (two queries; the view calls it, never a template tag)."""
    operator = bool(user and user.is_authenticated and user.has_role("operator"))
    return {
        "installs": list(NodeInstall.objects.filter(node=node).select_related("version__model")
                         .order_by("repo", "-state")),
        "recent": list(NodeCommand.objects.filter(node=node).select_related("version")[:RECENT_COMMANDS]),
        "deploy_form": DeployForm(initial={"node": node.pk}) if operator else None,
        "operator": operator,
        "unreachable": unreachable_reason(node),  # Deploy here, Activate and Remove are disabled with it
    }
