from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from fleet.lib.choices import ColouredChoices


class NodeKind(models.TextChoices):
    GPU_SERVER = "gpu_server", "GPU server"
    EDGE_DEVICE = "edge_device", "Edge device"
    CPU_NODE = "cpu_node", "CPU node"


class NodeStatus(ColouredChoices):
    NEVER_SEEN = "never_seen", "Never seen", "grey"
    ONLINE = "online", "Online", "green"
    OFFLINE = "offline", "Offline", "red"
    REVOKED = "revoked", "Revoked", "purple"


class Node(models.Model):
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=NodeKind.choices, default=NodeKind.GPU_SERVER)
    hostname = models.CharField(max_length=255, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    os = models.CharField(max_length=200, blank=True)
    arch = models.CharField(max_length=32, blank=True)
    cpu_count = models.PositiveIntegerField(null=True, blank=True)
    memory_bytes = models.BigIntegerField(null=True, blank=True)
    disk_bytes = models.BigIntegerField(null=True, blank=True)
    agent_version = models.CharField(max_length=40, blank=True)
    gpu_note = models.CharField(max_length=300, blank=True, help_text="Why the agent found no GPUs, if it said.")
    status = models.CharField(max_length=16, choices=NodeStatus.choices, default=NodeStatus.NEVER_SEEN)
    status_changed_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # sha256 of the facts of the last hello stored in full ("" when unknown or since changed elsewhere): a
    # reconnect with the same facts skips the hello transaction (fleet/agents/arrivals.py).
    hello_digest = models.CharField(max_length=64, blank=True, default="", editable=False)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["status", "kind"])]

    def __str__(self) -> str:
        return self.name

    @property
    def status_colour(self) -> str:
        return NodeStatus(self.status).colour


class GpuState(ColouredChoices):
    PRESENT = "present", "Present", "green"
    LOST = "lost", "Lost", "red"


class Gpu(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveIntegerField()
    uuid = models.CharField(max_length=96)
    name = models.CharField(max_length=128)
    memory_total_bytes = models.BigIntegerField(null=True, blank=True)
    driver_version = models.CharField(max_length=40, blank=True)
    cuda_version = models.CharField(max_length=20, blank=True)
    mig_mode = models.BooleanField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=GpuState.choices, default=GpuState.PRESENT)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["node_id", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "uuid"], name="gpu_unique_uuid_per_node")]

    def __str__(self) -> str:
        return f"{self.node.name}/gpu{self.index} {self.name}"

    @property
    def state_colour(self) -> str:
        return GpuState(self.state).colour


class EnrollmentToken(models.Model):
    """A one-time (or few-times) secret an operator hands to a new node. Only its hash is stored."""

    token_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=8)
    note = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField()
    uses_left = models.PositiveIntegerField(default=1)
    uses_total = models.PositiveIntegerField(default=1)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"enrollment token {self.hint}"

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.uses_left <= 0:
            return "used"
        if self.expires_at <= timezone.now():
            return "expired"
        return "active"


class NodeCredential(models.Model):
    """The secret a node's agent presents as `Authorization: Bearer`. Only its hash is stored."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="credentials")
    secret_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=8)
    enrollment_token = models.ForeignKey(
        EnrollmentToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="credentials"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True, help_text="When a newer secret replaced this one.")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"credential {self.hint} of {self.node.name}"

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class RuntimeState(ColouredChoices):
    STOPPED = "stopped", "Stopped", "grey"
    STARTING = "starting", "Starting", "amber"
    READY = "ready", "Ready", "green"
    FAILED = "failed", "Failed", "red"


class NodeRuntime(models.Model):
    """One runtime process on a node serving one model version, as the node's agent last reported it.

    The agent's report (hello `serving`, `runtime` frames) replaces all of a node's rows; an offline
    node keeps its rows as the last known state (``updated_at`` says when), never as the present.
    """

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="runtimes")
    repo = models.CharField(max_length=200)
    sha = models.CharField(max_length=40)
    runtime = models.CharField(max_length=16, help_text="The adapter: builtin, vllm or llamacpp.")
    state = models.CharField(max_length=16, choices=RuntimeState.choices, default=RuntimeState.STOPPED)
    reason = models.CharField(max_length=512, blank=True, help_text="Why it failed, or what it waits for.")
    port = models.PositiveIntegerField(null=True, blank=True)
    tokens_served = models.BigIntegerField(default=0)
    requests_active = models.PositiveIntegerField(default=0)
    restarts = models.PositiveIntegerField(default=0)
    log_tail = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["node_id", "repo"]
        constraints = [models.UniqueConstraint(fields=["node", "repo"], name="runtime_unique_repo_per_node")]
        indexes = [models.Index(fields=["repo", "state"])]

    def __str__(self) -> str:
        return f"{self.runtime} {self.repo}@{self.sha[:12]} on node {self.node_id}"

    @property
    def state_colour(self) -> str:
        return RuntimeState(self.state).colour


class SiteCache(models.Model):
    """The node that serves the model mirror to the other nodes of its site (label ``site``), as its agent
    reported in ``hello`` (``--site-cache``), with the counters of its last ``cache`` frame."""

    site = models.CharField(max_length=63, unique=True)
    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="site_cache")
    url = models.CharField(max_length=200, help_text="What the site's nodes dial.")
    disk_bytes = models.BigIntegerField(default=0)
    blobs = models.PositiveIntegerField(default=0)
    hits = models.BigIntegerField(default=0)
    misses = models.BigIntegerField(default=0)
    bytes_served = models.BigIntegerField(default=0)
    bytes_upstream = models.BigIntegerField(default=0)
    fetching = models.PositiveIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    registered_at = models.DateTimeField(default=timezone.now)
    reported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["site"]

    def __str__(self) -> str:
        return f"site cache of {self.site} on node {self.node_id}"

    @property
    def hit_ratio(self) -> float | None:
        """Share of the bytes served to neighbours that did not cross the WAN (None before any)."""
        if not self.bytes_served:
            return None
        return max(0.0, 1.0 - self.bytes_upstream / self.bytes_served)

    @property
    def hit_percent(self) -> float | None:
        ratio = self.hit_ratio
        return None if ratio is None else round(100 * ratio, 1)
