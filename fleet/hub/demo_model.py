"""The embedded demo's model: the tiny random Llama of ``fleet.hub.tiny_llama``, published into the mirror
with the same import an air-gapped site uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from fleet.hub.tiny_llama import CONFIG, write_tiny_llama  # noqa: F401 - re-exported for older callers

DEMO_REPO = "fleet-demo/tiny-llama"
DEMO_REVISION = "v1"


def publish_demo_model(stdout=None) -> str:
    """Import the tiny model once (a restarted demo finds it imported); returns its sha."""
    from fleet.hub.importer import import_folder

    folder = write_tiny_llama(Path(settings.VAR_DIR) / "demo" / "tiny-llama")
    version, created = import_folder("demo", folder, DEMO_REPO, DEMO_REVISION)
    if stdout is not None and created:
        stdout.write(f"published {DEMO_REPO}@{version.sha[:12]} into the mirror (Models page)")
    return version.sha


def publish_smollm2(stdout=None) -> dict[str, Any]:
    """Convert SmolLM2 once (cached under FLEET_DEMO_MODELS) and import v1, v2 and v3-broken into the mirror
    with the same folder import; returns the versions by revision. A second call imports nothing."""
    from fleet.hub import smollm2
    from fleet.hub.importer import import_folder

    root = Path(settings.FLEET_DEMO_MODELS) / smollm2.FOLDER
    v1, _ = smollm2.ensure_converted(root, notify=stdout.write if stdout is not None else None)
    versions = {}
    for revision, folder in smollm2.write_revisions(v1, root).items():
        version, created = import_folder("demo", folder, smollm2.REPO, revision)
        versions[revision] = version
        if stdout is not None and created:
            stdout.write(f"published {smollm2.REPO} {revision} ({version.sha[:12]}) into the mirror")
    return versions


def rollout_bytes(old: Any, new: Any) -> int:
    """Bytes a node holding ``old`` downloads to get ``new``: the files whose content it lacks (its HF cache
    keeps blobs by content too)."""
    held = set(old.files.values_list("blob_id", flat=True))  # blobs are content-addressed
    return sum(file.size for file in new.files.exclude(blob_id__in=held))
