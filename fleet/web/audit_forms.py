"""The audit log's filter: actor, action and a time window (UTC, as the page shows times)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.db.models import QuerySet

from fleet.accounts.models import AuditEvent

DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]


def _choice(label: str) -> forms.ChoiceField:
    return forms.ChoiceField(required=False, error_messages={"invalid_choice": f"no such {label} in the log"})


def _moment(label: str) -> forms.DateTimeField:
    widget = forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S")
    return forms.DateTimeField(required=False, label=label, input_formats=DATETIME_FORMATS, widget=widget,
                               error_messages={"invalid": "give a date and time such as 2026-01-31T14:05"})


class AuditFilterForm(forms.Form):
    actor = _choice("actor")
    action = _choice("action")
    since = _moment("From (UTC)")
    until = _moment("Until (UTC)")

    def __init__(self, *args: Any, actors: list[str], actions: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["actor"].choices = [("", "Anyone"), *[(name, name) for name in actors]]
        self.fields["action"].choices = [("", "All actions"), *[(action, action) for action in actions]]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            self.add_error("until", "must come after From")
        return data

    @property
    def active(self) -> bool:
        return any(self.data.get(name) for name in self.fields)

    def apply(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        """``events`` narrowed by the valid form's filters (each one an indexed column)."""
        data = self.cleaned_data
        if data["actor"]:
            events = events.filter(actor_name=data["actor"])
        if data["action"]:
            events = events.filter(action=data["action"])
        if data["since"]:
            events = events.filter(created_at__gte=data["since"])
        if data["until"]:
            events = events.filter(created_at__lte=data["until"])
        return events
