"""The light agent install: the ``fleet-agent`` distribution built from agent/pyproject.toml, installed
offline into a fresh venv, runs the agent and has no Django, Daphne, Channels or psycopg."""

from __future__ import annotations

import subprocess

import pytest

from tests.agent.agent_dist import SERVER_ONLY, clean_env, install_fresh, installed_names

IMPORT_ALL = """
import importlib, pkgutil, sys
import fleet.agent
skip = {"fleet.agent.__main__", "fleet.agent.collectors.nvml"}  # nvml needs the [nvidia] extra
names = [m.name for m in pkgutil.walk_packages(fleet.agent.__path__, "fleet.agent.") if m.name not in skip]
for name in names:
    importlib.import_module(name)
print(len(names), fleet.agent.__file__)
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    return install_fresh(tmp_path_factory.mktemp("agent-dist"))


def run(venv, *args, cwd):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=clean_env(), cwd=cwd)


def test_django_is_not_there_but_the_agent_is(venv, tmp_path):
    python = str(venv / "bin" / "python")
    django = run(venv, python, "-c", "import django", cwd=tmp_path)
    assert django.returncode != 0 and "No module named 'django'" in django.stderr
    help_ = run(venv, str(venv / "bin" / "fleet-agent"), "--help", cwd=tmp_path)
    assert help_.returncode == 0, help_.stderr
    assert "enroll" in help_.stdout and "status" in help_.stdout
    assert not installed_names(venv) & set(SERVER_ONLY)
    assert "fleet" not in installed_names(venv) and "fleet-agent" in installed_names(venv)


def test_every_agent_module_imports_from_the_installed_wheel(venv, tmp_path):
    result = run(venv, str(venv / "bin" / "python"), "-c", IMPORT_ALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    count, path = result.stdout.split()
    assert int(count) >= 20 and str(venv) in path  # the installed copy, not this checkout


def test_collector_selection_on_this_cpu_host_says_why(venv, tmp_path):
    code = "from fleet.agent.collectors import select_collector as s; r = s().report(); print(r['used']); " \
           "print(r['skipped']['nvml'])"
    result = run(venv, str(venv / "bin" / "python"), "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    used, nvml = result.stdout.splitlines()
    assert used == "none" and "nvidia-ml-py not installed" in nvml
