"""The embedded demo's model: the tiny random Llama of ``fleet.hub.tiny_llama``, published into the mirror
with the same import an air-gapped site uses."""

from __future__ import annotations

from pathlib import Path

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
