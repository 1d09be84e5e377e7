"""The agent runs on nodes without Django: nothing under fleet/agent may import it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fleet.agent

AGENT_DIR = Path(fleet.agent.__file__).parent
REPO_ROOT = AGENT_DIR.parent.parent

IMPORT_ALL = """
import importlib, pkgutil, sys
import fleet.agent
names = [m.name for m in pkgutil.walk_packages(fleet.agent.__path__, "fleet.agent.")
         if m.name != "fleet.agent.__main__"]
for name in names:
    importlib.import_module(name)
assert len(names) >= 8, names
leaked = sorted(m for m in sys.modules if m == "django" or m.startswith("django."))
assert not leaked, leaked
print(len(names))
"""


def test_importing_every_agent_module_loads_no_django():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}  # no DJANGO_SETTINGS_MODULE either
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 8


def django_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "django"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "django":
                found.append(node.module)
    return found


def test_no_django_import_statements():
    offenders = {
        str(path.relative_to(REPO_ROOT)): names
        for path in sorted(AGENT_DIR.rglob("*.py"))
        if (names := django_imports(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_the_scanner_catches_both_forms():
    source = "import django.conf\nfrom django.db import models\n"
    assert django_imports(source) == ["django.conf", "django.db"]
    assert django_imports("from .django import x\nimport djangofoo\n") == []
