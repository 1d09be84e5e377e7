"""Deployments (what a group of nodes serves) and rollouts (the controlled change of a deployment's version).

The states are those of `fleet.rollouts.machine` (a test keeps the two in step); every timer is a stored
deadline, and every change of a rollout is a compare-and-set on ``revision``, logged as a RolloutEvent.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from fleet.hub.models import HubModel, ModelVersion
from fleet.inventory.models import Node
from fleet.lib.choices import ColouredChoices


class RolloutStatus(ColouredChoices):
    PENDING = "pending", "Pending", "grey"
    PROGRESSING = "progressing", "Progressing", "amber"
    VERIFYING = "verifying", "Verifying", "amber"
    PAUSED = "paused", "Paused", "purple"
    SUCCEEDED = "succeeded", "Succeeded", "green"
    ABORTING = "aborting", "Aborting", "red"
    ROLLING_BACK = "rolling_back", "Rolling back", "red"
    ABORTED = "aborted", "Aborted", "red"
    SUPERSEDED = "superseded", "Superseded", "grey"


ACTIVE_ROLLOUT_STATES = ["pending", "progressing", "verifying", "paused", "aborting", "rolling_back"]


class TargetStatus(ColouredChoices):
    QUEUED = "queued", "Queued", "grey"
    SCHEDULED = "scheduled", "Scheduled", "grey"
    DOWNLOADING = "downloading", "Downloading", "amber"
    STAGED = "staged", "Staged", "purple"
    ACTIVATING = "activating", "Activating", "amber"
    VERIFYING = "verifying", "Verifying", "amber"
    COMMITTED = "committed", "Committed", "green"
    DEFERRED = "deferred", "Deferred (offline)", "grey"
    ROLLING_BACK_LOCAL = "rolling_back_local", "Rolling back locally", "red"
    REVERTING = "reverting", "Reverting", "red"
    SKIPPED = "skipped", "Skipped", "grey"
    FAILED = "failed", "Failed", "red"
    REVERTED = "reverted", "Reverted", "purple"
    ABORTED = "aborted", "Aborted", "grey"


class ServedSide(models.TextChoices):
    OLD = "old", "Old version"
    NEW = "new", "New version"


class Deployment(models.Model):
    """A name (``chat-default``) for one repo served by a group of nodes at a desired version."""

    name = models.SlugField(max_length=63, unique=True)
    model = models.ForeignKey(HubModel, on_delete=models.PROTECT, related_name="deployments")
    desired_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployments")
    selector = models.JSONField(default=dict, blank=True,
                                help_text="Labels a node must all carry to belong, e.g. {\"zone\": \"a\"}.")
    nodes = models.ManyToManyField(Node, blank=True, related_name="deployments",
                                   help_text="Nodes that belong whatever their labels.")
    runtime = models.CharField(max_length=32, default="builtin")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def repo(self) -> str:
        return self.model.repo_id

    def selects(self, labels: dict) -> bool:
        """Whether a node with these labels belongs through the selector (an empty selector selects none)."""
        return bool(self.selector) and all(labels.get(key) == value for key, value in self.selector.items())


class Rollout(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="rollouts")
    from_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="rollouts_from")
    to_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="rollouts_to")
    strategy = models.JSONField(default=dict, help_text="fleet.rollouts.strategy.Strategy, validated.")
    state = models.CharField(max_length=16, choices=RolloutStatus.choices, default=RolloutStatus.PENDING)
    revision = models.PositiveIntegerField(default=0, help_text="Raised by every change: the compare-and-set key.")
    revert = models.BooleanField(default=False, help_text="Winding down returns committed targets.")
    soak_until = models.DateTimeField(null=True, blank=True, help_text="The current wave's last soak deadline.")
    deadline_at = models.DateTimeField(null=True, blank=True, help_text="Progress deadline.")
    resume_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_total = models.FloatField(default=0.0, help_text="Seconds spent paused (not counted by timers).")
    pause_reason = models.CharField(max_length=300, blank=True)
    reason = models.CharField(max_length=500, blank=True, help_text="Why it ended as it did.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["deployment"], condition=Q(state__in=ACTIVE_ROLLOUT_STATES),
                                    name="rollouts_one_active_per_deployment"),
        ]
        indexes = [models.Index(fields=["state"])]

    def __str__(self) -> str:
        return f"rollout {self.pk} of {self.deployment_id}"

    @property
    def state_colour(self) -> str:
        return RolloutStatus(self.state).colour

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_ROLLOUT_STATES


class RolloutTarget(models.Model):
    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="targets")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="rollout_targets")
    position = models.PositiveIntegerField(default=0, help_text="The planner's order.")
    wave = models.PositiveSmallIntegerField(default=0)
    state = models.CharField(max_length=20, choices=TargetStatus.choices, default=TargetStatus.QUEUED)
    on = models.CharField(max_length=8, choices=ServedSide.choices, default=ServedSide.OLD)
    attempt = models.PositiveIntegerField(default=0)
    tries = models.PositiveSmallIntegerField(default=0)
    online = models.BooleanField(default=True)
    offline_until = models.DateTimeField(null=True, blank=True)
    soak_until = models.DateTimeField(null=True, blank=True)
    check_until = models.DateTimeField(null=True, blank=True)
    command_id = models.CharField(max_length=64, blank=True, help_text="The command it waits on.")
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["rollout", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["rollout", "node"], name="rollouts_target_unique_node")]

    def __str__(self) -> str:
        return f"{self.node_id} in rollout {self.rollout_id}: {self.state}"

    @property
    def state_colour(self) -> str:
        return TargetStatus(self.state).colour


class RolloutEvent(models.Model):
    """One transition of a rollout or one of its targets: from, to, why, who."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="events")
    target = models.ForeignKey(RolloutTarget, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    from_state = models.CharField(max_length=20)
    to_state = models.CharField(max_length=20)
    why = models.CharField(max_length=500, blank=True)
    actor_name = models.CharField(max_length=150, blank=True, help_text="A username, or 'engine'.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["rollout", "id"]

    def __str__(self) -> str:
        return f"{self.from_state} → {self.to_state}"
