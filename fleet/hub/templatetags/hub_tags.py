"""`{% node_models node %}`: the node page's section of installed versions and model commands."""

from __future__ import annotations

from typing import Any

from django import template

from fleet.hub.forms import DeployForm
from fleet.hub.models import NodeCommand, NodeInstall

register = template.Library()
RECENT_COMMANDS = 10


@register.inclusion_tag("hub/_node_models.html", takes_context=True)
def node_models(context: template.Context, node: Any) -> dict[str, Any]:
    request = context.get("request")
    user = getattr(request, "user", None)
    operator = bool(user and user.is_authenticated and user.has_role("operator"))
    installs = list(NodeInstall.objects.filter(node=node).select_related("version__model").order_by("repo", "-state"))
    recent = list(NodeCommand.objects.filter(node=node).select_related("version")[:RECENT_COMMANDS])
    form = DeployForm(initial={"node": node.pk}) if operator else None
    return {"node": node, "installs": installs, "recent": recent, "deploy_form": form, "operator": operator,
            "request": request, "csrf_token": context.get("csrf_token")}
