"""The "new rollout" form: a version of the deployment's repo and the strategy, its defaults filled in."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from fleet.hub.models import ApprovalState, HubModel, ModelVersion
from fleet.inventory.models import Node, NodeStatus
from fleet.rollouts.models import Deployment
from fleet.rollouts.strategy import HealthCheckSpec, Strategy

_DEFAULTS = Strategy()
_CHECK = HealthCheckSpec()
COUNT_HELP = "a number of nodes (2) or a share of them (25%)"

# form field → where it lives in the strategy
STRATEGY_FIELDS = {
    "canary": "canary", "batch": "batch", "max_unavailable": "max_unavailable",
    "min_ready_seconds": "min_ready_seconds", "canary_failure_budget": "canary_failure_budget",
    "failure_budget_percent": "failure_budget_percent", "auto_rollback": "auto_rollback",
    "progress_deadline_seconds": "progress_deadline_seconds", "offline_grace_seconds": "offline_grace_seconds",
    "order_by": "order_by", "check_prompt": "healthcheck.prompt", "check_expect": "healthcheck.expect",
    "check_timeout": "healthcheck.timeout_seconds",
}


def _count(value: str) -> int | str:
    value = value.strip()
    return int(value) if value.isdigit() else value


class RolloutForm(forms.Form):
    version = forms.ModelChoiceField(queryset=ModelVersion.objects.none(), empty_label="Choose a version")
    canary = forms.CharField(initial=str(_DEFAULTS.canary), max_length=8, help_text="first wave: " + COUNT_HELP)
    batch = forms.CharField(initial=str(_DEFAULTS.batch), max_length=8, help_text="each later wave: " + COUNT_HELP)
    max_unavailable = forms.CharField(initial=str(_DEFAULTS.max_unavailable), max_length=8,
                                      help_text="switching at once: " + COUNT_HELP)
    min_ready_seconds = forms.FloatField(initial=_DEFAULTS.min_ready_seconds, min_value=0,
                                         help_text="soak after each activation")
    canary_failure_budget = forms.IntegerField(initial=_DEFAULTS.canary_failure_budget, min_value=0,
                                               help_text="failures tolerated in the canary wave")
    failure_budget_percent = forms.FloatField(initial=_DEFAULTS.failure_budget_percent, min_value=0, max_value=100,
                                              help_text="failures tolerated afterwards, % of those nodes")
    auto_rollback = forms.BooleanField(initial=_DEFAULTS.auto_rollback, required=False,
                                       help_text="over the budget: put the old version back everywhere")
    progress_deadline_seconds = forms.FloatField(initial=_DEFAULTS.progress_deadline_seconds, min_value=10,
                                                 help_text="pause and alert when nothing moves this long")
    offline_grace_seconds = forms.FloatField(initial=_DEFAULTS.offline_grace_seconds, min_value=0,
                                             help_text="an offline node is deferred (not failed) after this")
    order_by = forms.CharField(initial=_DEFAULTS.order_by, required=False, max_length=63,
                               help_text="label that orders the waves (then the node name)")
    check = forms.BooleanField(initial=True, required=False, label="Health check",
                               help_text="ask each activated node a prompt on the new version")
    check_prompt = forms.CharField(initial=_CHECK.prompt, required=False, max_length=10_000, label="Prompt")
    check_expect = forms.CharField(required=False, max_length=1000, label="Expected text",
                                   help_text="the answer must contain it (empty: any non-empty answer)")
    check_timeout = forms.FloatField(initial=_CHECK.timeout_seconds, min_value=1, max_value=3600,
                                     label="Timeout (s)", required=False)

    def __init__(self, deployment: Deployment, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["min_ready_seconds"].initial = settings.FLEET_ROLLOUT_MIN_READY_SECONDS
        self.fields["version"].queryset = ModelVersion.objects.filter(
            model=deployment.model, approval=ApprovalState.APPROVED).order_by("-created_at", "-id")
        current = deployment.desired_version_id
        self.fields["version"].label_from_instance = lambda v: (
            f"{v.revision} · {v.sha[:12]}" + (" (serving now)" if v.pk == current else ""))

    def strategy(self) -> dict[str, Any]:
        data = self.cleaned_data
        strategy: dict[str, Any] = {
            "canary": _count(data["canary"]), "batch": _count(data["batch"]),
            "max_unavailable": _count(data["max_unavailable"]), "auto_rollback": data["auto_rollback"],
            "order_by": data["order_by"] or "",
        }
        for name in ("min_ready_seconds", "canary_failure_budget", "failure_budget_percent",
                     "progress_deadline_seconds", "offline_grace_seconds"):
            strategy[name] = data[name]
        strategy["healthcheck"] = {
            "prompt": data["check_prompt"], "expect": data["check_expect"] or None,
            "timeout_seconds": data["check_timeout"] or _CHECK.timeout_seconds,
        } if data["check"] else None
        return strategy

    def add_service_error(self, field: str, message: str) -> None:
        """A RolloutError's field (``strategy.batch``, ``version``) on the form field that holds it."""
        path = field.removeprefix("strategy.")
        name = next((key for key, where in STRATEGY_FIELDS.items() if where == path), None)
        if field == "version":
            name = "version"
        self.add_error(name, message)


class DeploymentForm(forms.Form):
    name = forms.SlugField(max_length=63, help_text="what clients ask for as model, e.g. chat-default")
    repo = forms.ModelChoiceField(queryset=HubModel.objects.order_by("repo_id"), to_field_name="repo_id",
                                  empty_label="Choose a model")
    version = forms.CharField(max_length=255, help_text="a revision name (v1, main) or a sha of an approved version")
    selector = forms.CharField(required=False, max_length=500, label="Label selector",
                               help_text="nodes carrying all these labels belong: role=chat, zone=a")
    nodes = forms.ModelMultipleChoiceField(
        queryset=Node.objects.exclude(status=NodeStatus.REVOKED).order_by("name"), to_field_name="name",
        required=False, help_text="nodes that belong whatever their labels")
    runtime = forms.ChoiceField(choices=[("builtin", "builtin"), ("vllm", "vllm"), ("llamacpp", "llama.cpp")])

    def clean_selector(self) -> dict[str, str]:
        selector = {}
        for part in filter(None, (item.strip() for item in self.cleaned_data["selector"].split(","))):
            key, equals, value = part.partition("=")
            if not equals or not key.strip():
                raise forms.ValidationError(f"{part!r}: write labels as key=value, separated by commas")
            selector[key.strip()] = value.strip()
        return selector
