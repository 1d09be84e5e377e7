"""Forms for the web pages: node filters, enrollment tokens, users (the audit filter: audit_forms.py)."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.db.models import Q, QuerySet
from django.db.models.fields.json import KeyTransform

from fleet.accounts.models import Role
from fleet.inventory.models import NodeKind, NodeStatus
from fleet.inventory.services import LABEL_KEY

# ---- node list filters ------------------------------------------------------------------------------


class NodeFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search")
    kind = forms.ChoiceField(required=False, choices=[("", "Any kind"), *NodeKind.choices])
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *NodeStatus.choices])
    label = forms.CharField(required=False, max_length=130, label="Label")

    def clean_label(self) -> tuple[str, str | None] | None:
        raw = self.cleaned_data["label"].strip()
        if not raw:
            return None
        key, sep, value = raw.partition("=")
        key = key.strip()
        if not LABEL_KEY.match(key):
            raise forms.ValidationError(
                f"label: {key!r} is not a valid label key; use key=value with a lower-case key of letters, "
                "digits, '.', '_', '/' or '-' (for example zone=lab-a)"
            )
        value = value.strip()
        if sep and (not value or len(value) > 63):
            raise forms.ValidationError("label: the value after '=' must be 1 to 63 characters")
        return key, (value if sep else None)

    def apply(self, queryset: QuerySet) -> QuerySet:
        """Narrow ``queryset`` by the cleaned filters (call after ``is_valid()``)."""
        data = self.cleaned_data
        if data.get("q"):
            queryset = queryset.filter(Q(name__icontains=data["q"]) | Q(hostname__icontains=data["q"]))
        if data.get("kind"):
            queryset = queryset.filter(kind=data["kind"])
        if data.get("status"):
            queryset = queryset.filter(status=data["status"])
        if data.get("label"):
            key, value = data["label"]
            if value is None:
                queryset = queryset.filter(labels__has_key=key)
            else:
                # An explicit transform: label keys may hold '.', '/' or '__', which the ORM's
                # `labels__<key>` lookup syntax would misread.
                queryset = queryset.alias(_label_value=KeyTransform(key, "labels"))
                queryset = queryset.filter(_label_value=value)
        return queryset

    @property
    def active(self) -> bool:
        return any(self.data.get(name) for name in self.fields)


# ---- enrollment tokens ------------------------------------------------------------------------------

EXPIRY_CHOICES = [("15m", "15 minutes"), ("1h", "1 hour"), ("24h", "24 hours"), ("7d", "7 days")]
EXPIRY_TTL = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
MAX_UI_TOKEN_USES = 1000


class EnrollmentTokenForm(forms.Form):
    expires = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="1h", label="Expires after")
    uses = forms.IntegerField(
        min_value=1, max_value=MAX_UI_TOKEN_USES, initial=1, label="Uses",
        help_text=f"How many nodes may enroll with it (1–{MAX_UI_TOKEN_USES}).",
    )
    note = forms.CharField(required=False, max_length=200, label="Note",
                           help_text="Optional: what or who it is for.")

    @property
    def ttl(self) -> timedelta:
        return EXPIRY_TTL[self.cleaned_data["expires"]]


# ---- users -------------------------------------------------------------------------------------------

ROLE_CHOICES = [(role.value, role.label) for role in Role]


class UserCreateForm(forms.Form):
    username = forms.CharField(max_length=150, widget=forms.TextInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Role.VIEWER)
    password = forms.CharField(
        strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 10 characters, not a common password.",
    )
    password_confirm = forms.CharField(
        strip=False, label="Password (again)", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )

    def clean_username(self) -> str:
        username = self.cleaned_data["username"].strip()
        User = get_user_model()
        User.username_validator(username)
        if User.objects.filter(username__iexact=username).exists():
            raise forms.ValidationError(f"a user named {username!r} already exists")
        return username

    def clean(self) -> dict:
        data = super().clean()
        password, confirm = data.get("password"), data.get("password_confirm")
        if password and confirm and password != confirm:
            self.add_error("password_confirm", "the two passwords differ")
        elif password and "username" in data:
            User = get_user_model()
            try:
                validate_password(password, User(username=data["username"]))
            except forms.ValidationError as error:
                self.add_error("password", error)
        return data


class UserUpdateForm(forms.Form):
    role = forms.ChoiceField(choices=[("", "No access"), *ROLE_CHOICES], required=False)
    is_active = forms.BooleanField(required=False, label="Active")
