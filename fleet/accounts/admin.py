"""Admin views of accounts. The audit log and API keys are read-only (keys are revoked through the audited
service); every user change made here is written to the audit log."""

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from fleet.accounts import audit
from fleet.accounts.apikeys import revoke_api_key
from fleet.accounts.models import ApiKey, AuditEvent, User
from fleet.lib.admin import ReadOnlyAdmin


@admin.register(User)
class FleetUserAdmin(UserAdmin):
    fieldsets = UserAdmin.fieldsets + (("Fleet", {"fields": ("role",)}),)
    list_display = ("username", "email", "role", "is_active", "is_superuser", "last_login")
    list_filter = ("role", "is_active", "is_superuser")

    def save_model(self, request: HttpRequest, obj: User, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        changed = sorted(name for name in form.changed_data if name != "password")
        if not change:
            audit.record(request.user, "user.create", obj, role=obj.role, via="admin")
        elif changed or "password" in form.changed_data:
            values = {name: str(form.cleaned_data.get(name)) for name in changed
                      if name not in ("password1", "password2")}
            audit.record(request.user, "user.update", obj, via="admin", changed=changed, **values)

    def delete_model(self, request: HttpRequest, obj: User) -> None:
        audit.record(request.user, "user.delete", obj, via="admin")
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for user in queryset:
            self.delete_model(request, user)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "actor_name", "action", "target_type", "target_repr")
    list_filter = ("action", "target_type")
    search_fields = ("actor_name", "target_repr", "action")


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ("hint", "name", "user", "scopes", "created_at", "last_used_at", "revoked_at")
    list_select_related = ("user",)
    exclude = ("key_hash",)
    actions = ["revoke"]

    @admin.action(description="Revoke the selected API keys (audited)", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = sum(revoke_api_key(request.user, key) for key in queryset)
        self.message_user(request, f"Revoked {count} API key(s).", messages.SUCCESS)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.has_role("admin")
