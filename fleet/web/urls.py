"""Dashboard pages (included at the site root by fleet.urls)."""

import re

from django.conf import settings
from django.urls import path, re_path

from fleet.web.views import audit, enrollment, nodes, overview, static, users

_static_prefix = settings.STATIC_URL.strip("/")

urlpatterns = [
    path("", overview.overview, name="overview"),
    path("nodes/", nodes.node_list, name="node-list"),
    path("nodes/states/", nodes.node_states, name="node-states"),
    path("nodes/<int:pk>/", nodes.node_detail, name="node-detail"),
    path("enrollment/", enrollment.enrollment, name="enrollment"),
    path("enrollment/tokens/<int:pk>/revoke/", enrollment.token_revoke, name="token-revoke"),
    path("enrollment/credentials/<int:pk>/revoke/", enrollment.credential_revoke, name="credential-revoke"),
    path("users/", users.users, name="users"),
    path("users/<int:pk>/", users.user_update, name="user-update"),
    path("audit/", audit.audit_log, name="audit"),
]

if _static_prefix and "://" not in settings.STATIC_URL:
    urlpatterns.append(
        re_path(rf"^{re.escape(_static_prefix)}/(?P<path>.+)$", static.static_file, name="static-file")
    )
