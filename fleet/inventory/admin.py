from django.contrib import admin

from fleet.inventory.models import EnrollmentToken, Gpu, Node, NodeCredential


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    readonly_fields = ("index", "uuid", "name", "memory_total_bytes", "driver_version", "cuda_version", "mig_mode",
                       "state", "first_seen", "last_seen")


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "status", "hostname", "agent_version", "last_seen")
    list_filter = ("kind", "status")
    search_fields = ("name", "hostname")
    inlines = [GpuInline]
    readonly_fields = ("status", "status_changed_at", "last_seen", "created_at")


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):
    list_display = ("node", "index", "name", "uuid", "state", "memory_total_bytes", "driver_version")
    list_filter = ("state", "name")
    search_fields = ("uuid", "node__name")
    list_select_related = ("node",)


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin):
    list_display = ("hint", "note", "created_by", "created_at", "expires_at", "uses_left", "revoked_at")
    # The hash is useless to a person and the plaintext is never stored: nothing to edit by hand.
    readonly_fields = ("token_hash", "hint", "created_by", "created_at", "uses_total")


@admin.register(NodeCredential)
class NodeCredentialAdmin(admin.ModelAdmin):
    list_display = ("node", "hint", "created_at", "rotated_at", "revoked_at")
    list_select_related = ("node",)
    readonly_fields = ("secret_hash", "hint", "node", "enrollment_token", "created_at", "rotated_at")
