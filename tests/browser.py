"""Debian Chromium for Playwright tests: where it lives, the flags this machine needs, the skip marker."""

from __future__ import annotations

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian chromium at {CHROMIUM}")


def launch(playwright):
    """Start Debian's chromium (never a downloaded one) through a sync Playwright instance."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)


def screenshot_path(name: str) -> str:
    """Where a test saves its screenshot ``name``: $FLEET_SCREENSHOTS, else var/screenshots/ in the checkout."""
    from pathlib import Path

    folder = Path(os.environ.get("FLEET_SCREENSHOTS") or Path(__file__).resolve().parent.parent / "var" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)
