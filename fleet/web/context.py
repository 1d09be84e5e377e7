"""Template context for every page: the top bar's alert count."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from fleet.telemetry.alert_actions import firing_count


def alerts(request: HttpRequest) -> dict[str, Any]:
    """``alerts_firing``: open alerts nobody acknowledged or silenced, counted only when a page shows it
    (a callable: the template calls it) and only for those who may see alerts."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.has_role("viewer"):
        return {}
    return {"alerts_firing": firing_count}
