"""Smaller holes: ids out of range answer 400, a never-migrated database gets `run migrate` instead of a
traceback, the embedded database is private, every page carries a Content-Security-Policy, and a deleted
node leaves the live telemetry window."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.integration.harness import ROOT

HUGE = "1" * 30


@pytest.mark.django_db
@pytest.mark.parametrize("url", [
    f"/nodes/states/?ids={HUGE}",
    f"/nodes/states/?ids=1,{2**63}",
    f"/models/progress/?versions={HUGE}",
    f"/models/progress/?commands=1,{HUGE}",
    f"/alerts/?node={HUGE}",
    f"/alerts/feed/?node={HUGE}",
    "/alerts/?node=abc",
])
def test_out_of_range_ids_answer_400(client: Client, charlie, url: str) -> None:
    client.force_login(charlie)
    response = client.get(url)
    assert response.status_code == 400, (url, response.status_code)
    body = response.content.decode()
    assert "out of range" in body or "whole number" in body or "node id" in body


@pytest.mark.django_db
def test_ids_in_range_still_work(client: Client, charlie, make_node) -> None:
    node, _ = make_node()
    client.force_login(charlie)
    assert [n["id"] for n in client.get(f"/nodes/states/?ids={node.pk},{2**63 - 1}").json()["nodes"]] == [node.pk]
    assert client.get(f"/alerts/?node={node.pk}").status_code == 200


def _fresh_env(var: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "FLEET_"))}
    env.update({"DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_VAR_DIR": str(var)})
    return env


def test_commands_on_a_never_migrated_database_say_to_migrate(tmp_path) -> None:
    for command in (["createenrollmenttoken"], ["createoperator", "admin", "--role", "admin"],
                    ["importmodel", str(tmp_path), "--repo", "acme/x", "--revision", "v1"]):
        result = subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=_fresh_env(tmp_path / "var"),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert "run `python manage.py migrate` first" in result.stderr, result.stderr


def test_the_embedded_database_and_var_folder_are_private(tmp_path) -> None:
    var = tmp_path / "var"
    script = ("import os, django; os.umask(0o022); django.setup(); from django.db import connection; "
              "connection.ensure_connection(); connection.cursor().execute('CREATE TABLE t (x int)')")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_fresh_env(var), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    for path in var.glob("fleet.sqlite3*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((var / "secret_key").stat().st_mode) == 0o600


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/accounts/login/", "/", "/models/", "/admin/"])
def test_every_page_has_a_content_security_policy(client: Client, alice, url: str) -> None:
    client.force_login(alice)
    policy = client.get(url)["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'self'"
    assert directives["img-src"] == "'self' data:" and directives["frame-ancestors"] == "'none'"


def test_no_template_has_inline_script_or_event_handlers() -> None:
    import re

    offenders = []
    for path in list((ROOT / "templates").rglob("*.html")) + list((ROOT / "fleet").rglob("templates/**/*.html")):
        text = path.read_text()
        if re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text) or re.search(r"\son[a-z]+\s*=", text) \
                or "javascript:" in text:
            offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []


@pytest.mark.django_db
def test_deleting_a_node_forgets_it_in_the_live_window(make_node, django_capture_on_commit_callbacks) -> None:
    from fleet.inventory.services import delete_node
    from fleet.telemetry.live import live_telemetry

    node, _ = make_node()
    live_telemetry.node(node.pk)
    with django_capture_on_commit_callbacks(execute=True):
        delete_node("test", node)
    assert node.pk not in live_telemetry.nodes
