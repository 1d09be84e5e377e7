"""Sites (nodes sharing a ``site`` label) and their caches: which node serves the site's model mirror, its disk
use, its hit ratio (share of the bytes served to neighbours that did not cross the WAN)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from fleet.accounts.permissions import viewer_required
from fleet.inventory.sites import site_rows


@viewer_required
def site_list(request: HttpRequest) -> HttpResponse:
    return render(request, "web/sites.html", {"rows": site_rows()})
