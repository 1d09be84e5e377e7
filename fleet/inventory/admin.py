"""Admin views of the inventory. Credentials, tokens and GPUs are read-only: revoking goes through the
services (audited, and the agent is disconnected); deleting a node goes through ``delete_node``."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from fleet.inventory.models import EnrollmentToken, Gpu, Node, NodeCredential
from fleet.inventory.services import delete_node, revoke_credential, revoke_enrollment_token
from fleet.lib.admin import ReadOnlyAdmin


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    readonly_fields = ("index", "uuid", "name", "memory_total_bytes", "driver_version", "cuda_version", "mig_mode",
                       "state", "first_seen", "last_seen")

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Node)
class NodeAdmin(ReadOnlyAdmin):
    """Nodes change through enrollment and their agent; an admin may delete one (audited, via the service)."""

    list_display = ("name", "kind", "status", "hostname", "agent_version", "last_seen")
    list_filter = ("kind", "status")
    search_fields = ("name", "hostname")
    inlines = [GpuInline]

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_active and request.user.has_role("admin")

    def get_deleted_objects(self, objs, request: HttpRequest):
        # Its GPUs, secrets and telemetry go with it by design, though none of them can be deleted alone.
        deleted, counts, _, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected

    def delete_model(self, request: HttpRequest, obj: Node) -> None:
        delete_node(request.user, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for node in queryset:
            delete_node(request.user, node)


@admin.register(Gpu)
class GpuAdmin(ReadOnlyAdmin):
    list_display = ("node", "index", "name", "uuid", "state", "memory_total_bytes", "driver_version")
    list_filter = ("state", "name")
    search_fields = ("uuid", "node__name")
    list_select_related = ("node",)


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(ReadOnlyAdmin):
    list_display = ("hint", "note", "created_by", "created_at", "expires_at", "uses_left", "revoked_at")
    exclude = ("token_hash",)  # useless to a person; the plaintext is never stored
    actions = ["revoke"]

    @admin.action(description="Revoke the selected tokens (audited)", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = sum(revoke_enrollment_token(request.user, token) for token in queryset)
        self.message_user(request, f"Revoked {count} enrollment token(s).", messages.SUCCESS)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.has_role("operator")


@admin.register(NodeCredential)
class NodeCredentialAdmin(ReadOnlyAdmin):
    list_display = ("node", "hint", "created_at", "rotated_at", "revoked_at")
    list_select_related = ("node",)
    exclude = ("secret_hash",)
    actions = ["revoke"]

    @admin.action(description="Revoke the selected node secrets (audited; the agent is disconnected)",
                  permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = sum(revoke_credential(request.user, credential) for credential in queryset.select_related("node"))
        self.message_user(request, f"Revoked {count} node secret(s).", messages.SUCCESS)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.has_role("admin")
