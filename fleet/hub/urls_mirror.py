"""The /hf/ mirror routes (included at ``hf/`` by fleet.urls): the Hub's own URL shapes."""

from django.urls import re_path

from fleet.hub import mirror

REPO = r"(?P<repo_id>[^/]+/[^/]+)"

urlpatterns = [
    re_path(r"^api/models/?$", mirror.list_models, name="hf-models"),
    re_path(rf"^api/models/{REPO}/revision/(?P<revision>[^/]+)$", mirror.model_info, name="hf-revision"),
    re_path(rf"^api/models/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?$", mirror.tree, name="hf-tree"),
    re_path(rf"^api/models/{REPO}/auth-check$", mirror.auth_check, name="hf-auth-check"),
    re_path(rf"^api/models/{REPO}$", mirror.model_info, name="hf-model"),
    re_path(rf"^{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)$", mirror.resolve, name="hf-resolve"),
]
