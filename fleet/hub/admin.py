"""Read-mostly admin views of the hub tables. Versions are immutable and tokens never shown: changes go
through the Models pages (which audit them)."""

from django.contrib import admin

from fleet.hub.models import Blob, HubModel, ModelVersion, NodeCommand, NodeInstall
from fleet.lib.admin import ReadOnlyAdmin as ReadOnly


@admin.register(HubModel)
class HubModelAdmin(ReadOnly):
    list_display = ("repo_id", "upstream", "has_token", "created_at")
    search_fields = ("repo_id",)
    exclude = ("token_encrypted",)


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnly):
    list_display = ("model", "revision", "sha", "total_size", "approval", "sync_state", "created_at")
    list_filter = ("approval", "sync_state", "source")
    search_fields = ("model__repo_id", "sha", "revision")
    list_select_related = ("model",)


@admin.register(Blob)
class BlobAdmin(ReadOnly):
    list_display = ("digest", "size", "state", "bytes_done", "attempts", "next_attempt_at", "updated_at")
    list_filter = ("state",)
    search_fields = ("digest",)


@admin.register(NodeCommand)
class NodeCommandAdmin(ReadOnly):
    list_display = ("command_id", "node", "kind", "repo", "sha", "state", "created_at", "finished_at")
    list_filter = ("kind", "state")
    search_fields = ("command_id", "repo", "node__name")
    list_select_related = ("node",)


@admin.register(NodeInstall)
class NodeInstallAdmin(ReadOnly):
    list_display = ("node", "repo", "sha", "state", "updated_at")
    list_filter = ("state",)
    list_select_related = ("node",)
