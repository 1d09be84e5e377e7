"""User management (admin only): list, create with a role, change role or deactivate."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from fleet import events
from fleet.accounts import audit
from fleet.accounts.models import Role
from fleet.accounts.permissions import admin_required
from fleet.lib.http import paginate
from fleet.web.forms import UserCreateForm, UserUpdateForm

USERS_PER_PAGE = 50


def _apply_role(user, role: str) -> None:
    """Admins also manage everything through Django's admin site; nobody else gets in there."""
    user.role = role
    user.is_staff = user.is_superuser = role == Role.ADMIN


@admin_required
@require_http_methods(["GET", "POST"])
def users(request: HttpRequest) -> HttpResponse:
    User = get_user_model()
    if request.method == "POST":
        form = UserCreateForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            with transaction.atomic():
                user = User(username=data["username"])
                _apply_role(user, data["role"])
                user.set_password(data["password"])
                user.save()
                audit.record(request.user, "user.create", user, role=user.role)
            messages.success(request, f"User {user.username} created with the {user.get_role_display()} role")
            return redirect("users")
    else:
        form = UserCreateForm()
    page = paginate(request, User.objects.order_by("username"), USERS_PER_PAGE)
    rows = [(user, UserUpdateForm(initial={"role": user.effective_role, "is_active": user.is_active}))
            for user in page]
    return render(request, "web/users.html", {"form": form, "page": page, "rows": rows})


@admin_required
@require_POST
def user_update(request: HttpRequest, pk: int) -> HttpResponse:
    User = get_user_model()
    target = get_object_or_404(User, pk=pk)
    form = UserUpdateForm(request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(request, f"{field}: {' '.join(errors)}")
        return redirect("users")
    role, active = form.cleaned_data["role"], form.cleaned_data["is_active"]
    if target.pk == request.user.pk and (role != Role.ADMIN or not active):
        messages.error(
            request,
            "You cannot remove your own admin role or deactivate yourself; ask another admin to do it.",
        )
        return redirect("users")
    changes: dict[str, list] = {}
    if role != target.role or target.is_superuser != (role == Role.ADMIN):
        changes["role"] = [target.role, role]
    if active != target.is_active:
        changes["is_active"] = [target.is_active, active]
    if not changes:
        messages.info(request, f"Nothing changed for {target.username}.")
        return redirect("users")
    with transaction.atomic():
        _apply_role(target, role)
        target.is_active = active
        target.save(update_fields=["role", "is_staff", "is_superuser", "is_active"])
        audit.record(request.user, "user.update", target, **changes)
        # Open live sockets were authorised under the old role: close them; the page reconnects if allowed.
        events.publish(events.user_group(target.pk), {"type": "user.changed"})
    summary = ", ".join(f"{key} {old or 'none'} → {new or 'none'}" for key, (old, new) in changes.items())
    messages.success(request, f"User {target.username} updated: {summary}.")
    return redirect("users")
