"""Model pages (included at ``models/`` by fleet.urls)."""

from django.urls import path

from fleet.hub import version_nodes, views

urlpatterns = [
    path("", views.model_list, name="hub-models"),
    path("add/", views.model_add, name="hub-add"),
    path("progress/", views.progress, name="hub-progress"),
    path("deploy/", views.deploy, name="hub-deploy"),
    path("versions/<int:pk>/", views.version_detail, name="hub-version"),
    path("versions/<int:pk>/nodes/", version_nodes.version_nodes, name="hub-version-nodes"),
    path("versions/<int:pk>/<slug:action>/", views.version_action, name="hub-version-action"),
    path("nodes/<int:node_pk>/<slug:kind>/", views.node_command, name="hub-node-command"),
]
