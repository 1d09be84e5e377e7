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
