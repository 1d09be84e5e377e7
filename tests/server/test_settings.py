"""A wrong configuration value stops start-up with a message naming the variable, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start(tmp_path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "DATABASE_URL", "REDIS_URL"))}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**clean, "DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_VAR_DIR": str(tmp_path), **env},
    )


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("FLEET_DEBUG", "maybe", "boolean"),
        ("FLEET_SECRET_KEY", "short", "at least 32"),
        ("DATABASE_URL", "mysql://root@localhost/fleet", "postgres://"),
        ("REDIS_URL", "http://localhost:6379", "redis://"),
        ("FLEET_OFFLINE_AFTER", "soon", "number"),
        ("FLEET_OFFLINE_AFTER", "0", "at least 1"),
        ("FLEET_ALLOWED_HOSTS", "https://fleet.example.com", "bare host"),
        ("FLEET_LOG_LEVEL", "LOUD", "level"),
    ],
)
def test_bad_value_names_the_variable(tmp_path, variable, value, hint):
    result = start(tmp_path, **{variable: value})
    assert result.returncode == 2
    assert "started" not in result.stdout
    assert variable in result.stderr and hint in result.stderr
    assert "Traceback" not in result.stderr


def test_defaults_start_the_embedded_setup(tmp_path):
    result = start(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
