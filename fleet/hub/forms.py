"""Forms of the model pages: add a model version, deploy one to a node."""

from __future__ import annotations

import re

from django import forms

from fleet.hub import store
from fleet.hub.models import ApprovalState, ModelVersion
from fleet.hub.reach import unreachable_reason
from fleet.inventory.models import Node, NodeStatus

REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")
PATTERN = re.compile(r"^[A-Za-z0-9*?\[\]._/\-]{1,200}$")


class AddModelForm(forms.Form):
    repo = forms.CharField(max_length=96, label="Repository", help_text="ORG/NAME as on the hub, e.g. "
                           "Qwen/Qwen2.5-0.5B-Instruct",
                           widget=forms.TextInput(attrs={"placeholder": "org/name", "autocomplete": "off",
                                                         "spellcheck": "false"}))
    revision = forms.CharField(max_length=255, initial="main", label="Revision",
                               help_text="A branch, a tag or a 40-hex commit sha; Fleet pins it to one commit.")
    token = forms.CharField(required=False, max_length=500, label="Access token (optional)",
                            help_text="For gated or private repos; stored encrypted, never shown again. Blank: "
                                      "the model's stored token, else FLEET_HF_TOKEN.",
                            widget=forms.PasswordInput(attrs={"autocomplete": "off"}))
    allow_patterns = forms.CharField(required=False, max_length=2000, label="Files (optional)",
                                     help_text="Glob patterns separated by spaces or commas, e.g. *.safetensors "
                                               "*.json. Blank: safetensors, configs, tokenizer, chat template.",
                                     widget=forms.TextInput(attrs={"placeholder": "default filter",
                                                                   "spellcheck": "false"}))

    def clean_repo(self) -> str:
        repo = self.cleaned_data["repo"].strip().strip("/")
        if repo.startswith(("http://", "https://")):
            repo = "/".join(repo.split("/")[3:5])  # a pasted https://huggingface.co/org/name URL
        if not store.valid_repo_id(repo):
            raise forms.ValidationError("give the repository as ORG/NAME (letters, digits, '.', '_' or '-'), "
                                        "e.g. meta-llama/Llama-3.1-8B-Instruct")
        return repo

    def clean_revision(self) -> str:
        revision = self.cleaned_data["revision"].strip()
        if not REVISION.match(revision):
            raise forms.ValidationError("give a branch or tag name (letters, digits, '.', '_' or '-') or a "
                                        "40-hex commit sha")
        return revision

    def clean_allow_patterns(self) -> list[str]:
        patterns = [p for p in re.split(r"[\s,]+", self.cleaned_data["allow_patterns"].strip()) if p]
        for pattern in patterns:
            if not PATTERN.match(pattern) or ".." in pattern:
                raise forms.ValidationError(f"{pattern!r} is not a file pattern; use globs such as *.safetensors")
        if len(patterns) > 50:
            raise forms.ValidationError("at most 50 patterns")
        return patterns


class NodeSelect(forms.Select):
    """Node options read "gpu-01 · Online"; an offline node's option is disabled, with the reason as its title."""

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        node = getattr(value, "instance", None)
        if node is not None:
            option["attrs"]["data-status"] = node.status
            reason = unreachable_reason(node)
            if reason:
                option["attrs"].update(disabled=True, title=reason)
        return option


class DeployForm(forms.Form):
    node = forms.ModelChoiceField(queryset=Node.objects.exclude(status=NodeStatus.REVOKED).order_by("name"),
                                  empty_label="Choose a node", widget=NodeSelect)
    version = forms.ModelChoiceField(queryset=ModelVersion.objects.filter(approval=ApprovalState.APPROVED)
                                     .select_related("model").order_by("model__repo_id", "-created_at"),
                                     empty_label="Choose a version")
    activate = forms.BooleanField(required=False, label="Activate once staged")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["node"].label_from_instance = lambda n: f"{n.name} · {n.get_status_display()}" + (
            " (must reconnect first)" if unreachable_reason(n) else "")
        self.fields["version"].label_from_instance = lambda v: f"{v.model.repo_id} · {v.revision} · {v.sha[:12]}"
