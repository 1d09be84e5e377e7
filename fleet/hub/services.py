"""Adding a model version from the upstream hub: preview (resolve only) and confirm (resolve + register)."""

from __future__ import annotations

from typing import Any

from fleet.hub import store, upstream
from fleet.hub.catalog import CatalogError, find_version, register_version
from fleet.hub.models import HubModel, ModelVersion, SourceKind


def model_token(repo_id: str, token: str) -> str:
    """The token to use for ``repo_id``: the one just typed, else the one stored for the model."""
    if token:
        return token
    model = HubModel.objects.filter(repo_id=repo_id).first()
    return store.decrypt_token(model.token_encrypted) if model else ""


def preview(repo_id: str, revision: str, token: str = "", allow_patterns: list[str] | None = None
            ) -> upstream.Resolved:
    """Resolve without saving anything. Raises UpstreamError or CatalogError."""
    if not store.valid_repo_id(repo_id):
        raise CatalogError("repo", "repo must look like ORG/NAME (letters, digits, '.', '_' or '-')")
    resolved = upstream.resolve(repo_id, revision, model_token(repo_id, token), allow_patterns)
    existing = find_version(repo_id, resolved.sha)
    if existing is not None:
        raise CatalogError("revision", f"{repo_id}@{resolved.sha[:12]} is already registered (revision "
                                       f"{existing.revision!r}); nothing to add")
    return resolved


def add_version(actor: Any, repo_id: str, revision: str, token: str = "", allow_patterns: list[str] | None = None,
                expect_sha: str = "") -> ModelVersion:
    """Resolve again and register. ``expect_sha`` (from the preview) refuses a revision that moved meanwhile."""
    resolved = preview(repo_id, revision, token, allow_patterns)
    if expect_sha and resolved.sha != expect_sha:
        raise CatalogError("revision", f"{revision!r} moved upstream since the preview (now {resolved.sha[:12]}); "
                                       "check the new file list and confirm again")
    return register_version(actor, repo_id=repo_id, revision=revision, sha=resolved.sha, entries=resolved.entries,
                            source=SourceKind.UPSTREAM, upstream=upstream.endpoint(), token=token or None,
                            allow_patterns=allow_patterns or [])
