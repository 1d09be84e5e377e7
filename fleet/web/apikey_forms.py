"""The form of the API keys page."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone

from fleet.accounts.apikeys import ApiKeyError, clean_allowed_models
from fleet.accounts.models import ApiScope

EXPIRY_CHOICES = [("", "Never"), ("1", "1 day"), ("7", "7 days"), ("30", "30 days"), ("90", "90 days"),
                  ("365", "1 year")]


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, help_text="What uses it, e.g. grafana or chat-app.")
    owner = forms.ModelChoiceField(queryset=get_user_model().objects.none(), required=True,
                                   help_text="The key acts with this user's role and stops working without it.")
    scopes = forms.MultipleChoiceField(choices=ApiScope.choices, widget=forms.CheckboxSelectMultiple,
                                       error_messages={"required": "pick at least one scope"})
    expires = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, label="Expires after")
    allowed_models = forms.CharField(
        required=False, label="Models (chat scope)", widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One repo id (ORG/NAME) or deployment name per line; empty: every model.")

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if user.has_role("admin"):
            self.fields["owner"].queryset = get_user_model().objects.filter(is_active=True).filter(
                Q(is_superuser=True) | ~Q(role="")).order_by("username")
            self.fields["owner"].initial = user.pk
        else:
            del self.fields["owner"]  # operators make keys for themselves only
        self.user = user

    def clean_allowed_models(self) -> list[str]:
        try:
            return clean_allowed_models(self.cleaned_data["allowed_models"].splitlines())
        except ApiKeyError as error:
            raise forms.ValidationError(str(error)) from None

    @property
    def owner_user(self):
        return self.cleaned_data.get("owner") or self.user

    @property
    def expires_at(self) -> datetime | None:
        days = self.cleaned_data.get("expires")
        return timezone.now() + timedelta(days=int(days)) if days else None
