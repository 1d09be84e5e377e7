"""TEST-ONLY settings for the stand-in chat backend: Fleet's settings with the stand-in targets URL."""

from fleet.settings import *  # noqa: F403

ROOT_URLCONF = "tests.playground.fake_urls"
