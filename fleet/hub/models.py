"""Pinned model versions, the blobs they are made of, and what each node holds.

A ModelVersion is immutable once created: a repo at one 40-hex commit with a fixed file manifest. Its
files point at content-addressed Blobs (sha256 for LFS files, the git blob sha1 for small ones: that is
the digest upstream announces before the bytes arrive), each stored once however many versions share it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from fleet.inventory.models import Node
from fleet.lib.choices import ColouredChoices
from fleet.lib.units import percent


class SourceKind(models.TextChoices):
    UPSTREAM = "upstream", "Upstream hub"
    IMPORT = "import", "Imported folder"


class HubModel(models.Model):
    """A repository known to Fleet (``org/name``), where it comes from and how to authenticate there."""

    repo_id = models.CharField(max_length=96, unique=True)
    upstream = models.CharField(max_length=300, blank=True, help_text="Endpoint it was resolved against.")
    token_encrypted = models.TextField(blank=True, help_text="Per-model upstream token (Fernet); never shown.")
    allow_patterns = models.JSONField(default=list, blank=True)
    default_version = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="What `main` (and no revision) serves; empty: the newest approved, synced version.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["repo_id"]

    def __str__(self) -> str:
        return self.repo_id

    @property
    def has_token(self) -> bool:
        return bool(self.token_encrypted)


class ApprovalState(ColouredChoices):
    PENDING = "pending", "Awaiting approval", "amber"
    APPROVED = "approved", "Approved", "green"
    REJECTED = "rejected", "Rejected", "red"


class SyncState(ColouredChoices):
    QUEUED = "queued", "Queued", "grey"
    SYNCING = "syncing", "Syncing", "amber"
    RETRYING = "retrying", "Retrying", "amber"
    SYNCED = "synced", "Synced", "green"
    FAILED = "failed", "Failed", "red"


class ModelVersion(models.Model):
    model = models.ForeignKey(HubModel, on_delete=models.CASCADE, related_name="versions")
    revision = models.CharField(max_length=255, help_text="The branch, tag or sha it was added by.")
    sha = models.CharField(max_length=40)
    source = models.CharField(max_length=16, choices=SourceKind.choices, default=SourceKind.UPSTREAM)
    total_size = models.BigIntegerField(default=0)
    file_count = models.PositiveIntegerField(default=0)
    approval = models.CharField(max_length=16, choices=ApprovalState.choices, default=ApprovalState.APPROVED)
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    approved_at = models.DateTimeField(null=True, blank=True)
    sync_state = models.CharField(max_length=16, choices=SyncState.choices, default=SyncState.QUEUED)
    sync_error = models.CharField(max_length=500, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__repo_id", "-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["model", "sha"], name="hub_version_unique_sha")]

    def __str__(self) -> str:
        return f"{self.model.repo_id}@{self.sha[:12]}"

    @property
    def approval_colour(self) -> str:
        return ApprovalState(self.approval).colour

    @property
    def sync_colour(self) -> str:
        return SyncState(self.sync_state).colour

    @property
    def synced(self) -> bool:
        return self.sync_state == SyncState.SYNCED

    @property
    def servable(self) -> bool:
        return self.approval == ApprovalState.APPROVED


class BlobState(ColouredChoices):
    MISSING = "missing", "Missing", "grey"
    DOWNLOADING = "downloading", "Downloading", "amber"
    PRESENT = "present", "Present", "green"
    FAILED = "failed", "Failed", "red"


class Blob(models.Model):
    """One stored file body. ``claim_token``/``lease_until`` make sure only one process downloads it.

    A transient failure leaves it ``missing`` with ``attempts`` counted and ``next_attempt_at`` set by
    exponential backoff; after FLEET_HUB_SYNC_MAX_ATTEMPTS (or a failure retrying cannot fix) it is
    ``failed`` until an operator retries.
    """

    digest = models.CharField(max_length=64, unique=True)
    size = models.BigIntegerField()
    state = models.CharField(max_length=16, choices=BlobState.choices, default=BlobState.MISSING, db_index=True)
    bytes_done = models.BigIntegerField(default=0)
    claim_token = models.CharField(max_length=32, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True,
                                           help_text="Not fetched again before this time (backoff after a failure).")
    error = models.CharField(max_length=500, blank=True, help_text="The last download error.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"blob {self.digest[:12]}"

    @property
    def state_colour(self) -> str:
        return BlobState(self.state).colour

    @property
    def retrying(self) -> bool:
        return self.state == BlobState.MISSING and self.attempts > 0

    @property
    def algorithm(self) -> str:
        return "sha256" if len(self.digest) == 64 else "git-sha1"


class VersionFile(models.Model):
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=1000)
    size = models.BigIntegerField()
    oid = models.CharField(max_length=40, help_text="git blob sha1 (of the LFS pointer for LFS files)")
    lfs_sha256 = models.CharField(max_length=64, blank=True)
    blob = models.ForeignKey(Blob, on_delete=models.PROTECT, related_name="files")

    class Meta:
        ordering = ["path"]
        constraints = [models.UniqueConstraint(fields=["version", "path"], name="hub_file_unique_path")]

    def __str__(self) -> str:
        return self.path

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.oid

    def manifest_entry(self) -> dict:
        entry: dict = {"path": self.path, "size": self.size, "oid": self.oid}
        if self.lfs_sha256:
            entry["lfs"] = {"sha256": self.lfs_sha256, "size": self.size}
        return entry


# ---- what nodes hold and what they were told ----------------------------------------------------------


class CommandKind(models.TextChoices):
    DEPLOY = "deploy", "Deploy"
    ACTIVATE = "activate", "Activate"
    REMOVE = "remove", "Remove"
    ROLLBACK = "rollback", "Roll back"
    HEALTHCHECK = "healthcheck", "Health check"


# What a person may queue by hand; health checks come from rollouts only.
MANUAL_COMMAND_KINDS = [CommandKind.DEPLOY, CommandKind.ACTIVATE, CommandKind.REMOVE, CommandKind.ROLLBACK]


class CommandState(ColouredChoices):
    PENDING = "pending", "Pending", "grey"
    SENT = "sent", "Sent", "grey"
    DOWNLOADING = "downloading", "Downloading", "amber"
    VERIFYING = "verifying", "Verifying", "amber"
    STAGED = "staged", "Staged", "green"
    ACTIVATING = "activating", "Activating", "amber"
    ACTIVE = "active", "Active", "green"
    REMOVED = "removed", "Removed", "grey"
    SUCCEEDED = "succeeded", "Succeeded", "green"
    FAILED = "failed", "Failed", "red"


class NodeCommand(models.Model):
    """A command for one node's agent: written first, sent after commit, re-sent until it finishes."""

    command_id = models.CharField(max_length=64, unique=True)
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="hub_commands")
    kind = models.CharField(max_length=16, choices=CommandKind.choices)
    version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="commands")
    repo = models.CharField(max_length=96)
    sha = models.CharField(max_length=40, blank=True)
    activate = models.BooleanField(default=False)
    state = models.CharField(max_length=16, choices=CommandState.choices, default=CommandState.PENDING)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    bytes_per_second = models.BigIntegerField(default=0, help_text="The agent's pull rate: of the last second "
                                              "while downloading, of the whole download once staged.")
    error = models.CharField(max_length=500, blank=True)
    prompt = models.TextField(blank=True, help_text="A health check's prompt.")
    expect = models.CharField(max_length=1000, blank=True, help_text="Text a health check's answer must contain.")
    timeout = models.FloatField(default=60.0, help_text="Seconds a health check may take.")
    detail = models.TextField(blank=True, help_text="What the agent answered (a health check's reply).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["node", "finished_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.repo}@{self.sha[:12]} on node {self.node_id}"

    @property
    def state_colour(self) -> str:
        return CommandState(self.state).colour

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def percent(self) -> int:
        return percent(self.bytes_done, self.bytes_total)


class InstallState(ColouredChoices):
    STAGED = "staged", "Staged", "grey"
    ACTIVE = "active", "Active", "green"


class NodeInstall(models.Model):
    """A version a node reports holding (from its hello and command results)."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="hub_installs")
    repo = models.CharField(max_length=96)
    sha = models.CharField(max_length=40)
    version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="installs")
    state = models.CharField(max_length=16, choices=InstallState.choices, default=InstallState.STAGED)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["repo", "-updated_at"]
        constraints = [models.UniqueConstraint(fields=["node", "repo", "sha"], name="hub_install_unique")]

    def __str__(self) -> str:
        return f"{self.repo}@{self.sha[:12]} {self.state} on node {self.node_id}"

    @property
    def state_colour(self) -> str:
        return InstallState(self.state).colour
