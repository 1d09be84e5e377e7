"""Dashboard pages (included at the site root by fleet.urls)."""

import re

from django.conf import settings
from django.urls import path, re_path

from fleet.web.views import alerts, apikeys, audit, enrollment, nodes, overview, sites, static, users
from fleet.web.views import telemetry as telemetry_views

_static_prefix = settings.STATIC_URL.strip("/")

urlpatterns = [
    path("", overview.overview, name="overview"),
    path("nodes/", nodes.node_list, name="node-list"),
    path("nodes/states/", nodes.node_states, name="node-states"),
    path("nodes/<int:pk>/", nodes.node_detail, name="node-detail"),
    path("sites/", sites.site_list, name="site-list"),
    path("nodes/<int:pk>/telemetry/live/", telemetry_views.node_live, name="node-telemetry-live"),
    path("nodes/<int:pk>/telemetry/history/", telemetry_views.node_history, name="node-telemetry-history"),
    path("telemetry/heatmap/", telemetry_views.fleet_heat, name="fleet-heatmap"),
    path("alerts/", telemetry_views.alert_list, name="alerts"),
    path("alerts/feed/", telemetry_views.alert_feed, name="alert-feed"),
    path("alerts/<int:pk>/acknowledge/", alerts.alert_acknowledge, name="alert-acknowledge"),
    path("alerts/<int:pk>/silence/", alerts.alert_silence, name="alert-silence"),
    path("enrollment/", enrollment.enrollment, name="enrollment"),
    path("enrollment/tokens/<int:pk>/revoke/", enrollment.token_revoke, name="token-revoke"),
    path("enrollment/credentials/<int:pk>/revoke/", enrollment.credential_revoke, name="credential-revoke"),
    path("api-keys/", apikeys.api_keys, name="api-keys"),
    path("api-keys/<int:pk>/revoke/", apikeys.api_key_revoke, name="api-key-revoke"),
    path("users/", users.users, name="users"),
    path("users/<int:pk>/", users.user_update, name="user-update"),
    path("audit/", audit.audit_log, name="audit"),
]

if _static_prefix and "://" not in settings.STATIC_URL:
    urlpatterns.append(
        re_path(rf"^{re.escape(_static_prefix)}/(?P<path>.+)$", static.static_file, name="static-file")
    )
