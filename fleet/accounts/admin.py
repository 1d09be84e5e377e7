from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from fleet.accounts.models import ApiKey, AuditEvent, User


@admin.register(User)
class FleetUserAdmin(UserAdmin):
    fieldsets = UserAdmin.fieldsets + (("Fleet", {"fields": ("role",)}),)
    list_display = ("username", "email", "role", "is_active", "is_superuser", "last_login")
    list_filter = ("role", "is_active", "is_superuser")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor_name", "action", "target_type", "target_repr")
    list_filter = ("action", "target_type")
    search_fields = ("actor_name", "target_repr", "action")
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("hint", "name", "user", "scopes", "created_at", "last_used_at", "revoked_at")
    list_select_related = ("user",)
    readonly_fields = ("key_hash", "hint", "created_at", "last_used_at")
