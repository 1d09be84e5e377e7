"""Build the agent's own distribution (``agent/pyproject.toml``) and install it into a fresh venv, offline.

Shared by ``tests/agent/test_agent_dist.py`` and ``bench/agent_footprint.py``. The dependencies come
from a wheelhouse repacked from the distributions installed in this environment (the versions the test
suite runs against), so the install needs no index and no network: ``pip install --no-index``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_PROJECT = REPO_ROOT / "agent" / "pyproject.toml"
SERVER_ONLY = ("django", "daphne", "channels", "channels-redis", "psycopg", "psycopg-binary", "dj-database-url")


def agent_requirements(extras: tuple[str, ...] = ()) -> list[str]:
    project = tomllib.loads(AGENT_PROJECT.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return requirements


def build_agent_wheel(work: Path) -> Path:
    """``pip wheel`` of a copy of agent/ and fleet/agent (the checkout stays free of build output)."""
    src = work / "src"
    shutil.copytree(REPO_ROOT / "fleet" / "agent", src / "fleet" / "agent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    modules = tomllib.loads(AGENT_PROJECT.read_text(encoding="utf-8"))["tool"]["setuptools"]["py-modules"]
    for module in modules:  # fleet.lib.units → fleet/lib/units.py, with its package's __init__.py
        parts = module.split(".")
        for rel in (Path(*parts[:-1], "__init__.py"), Path(*parts[:-1], parts[-1] + ".py")):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, src / rel)
    (src / "agent").mkdir(parents=True)
    shutil.copy2(AGENT_PROJECT, src / "agent" / "pyproject.toml")
    out = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out), str(src / "agent")], check=True, timeout=300)
    (wheel,) = out.glob("fleet_agent-*.whl")
    return wheel


def closure(requirements: list[str]) -> list[md.Distribution]:
    """The installed distributions these requirements pull in (markers evaluated for this interpreter)."""
    seen: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        dist = md.distribution(req.name)
        if dist.version not in req.specifier and req.specifier:
            raise RuntimeError(f"installed {req.name} {dist.version} does not satisfy {req}")
        seen[name] = dist
        for extra in req.extras:
            todo += [Requirement(r) for r in dist.requires or []
                     if Requirement(r).marker and Requirement(r).marker.evaluate({"extra": extra})]
        todo += [Requirement(r) for r in dist.requires or []]
    return list(seen.values())


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack(dist: md.Distribution, out: Path) -> Path:
    """An installed distribution as a wheel again: its files from RECORD, a fresh RECORD."""
    info_dir = Path(str(dist._path))  # type: ignore[attr-defined]  # the .dist-info folder
    site = info_dir.parent
    wheel_meta = (info_dir / "WHEEL").read_text(encoding="utf-8")
    tag = re.search(r"^Tag: (\S+)$", wheel_meta, re.M).group(1)
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    path = out / f"{name}-{dist.version}-{tag}.whl"
    records = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in dist.files or []:
            rel = file.as_posix()
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
                continue  # console scripts (regenerated from entry_points.txt) and bytecode
            if rel.startswith(info_dir.name + "/") and rel.split("/")[-1] in (
                    "RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            data = (site / rel).read_bytes()
            archive.writestr(rel, data)
            records.append(f"{rel},{_record_hash(data)},{len(data)}")
        records.append(f"{info_dir.name}/RECORD,,")
        archive.writestr(f"{info_dir.name}/RECORD", "\n".join(records) + "\n")
    return path


def make_wheelhouse(out: Path, requirements: list[str]) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return [repack(dist, out).name for dist in closure(requirements)]


def clean_env() -> dict[str, str]:
    """No PYTHONPATH, no Django settings, no pip config pointing at indexes: only what we pass."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "DJANGO", "PIP_", "VIRTUAL_ENV", "FLEET_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def install_fresh(work: Path, extras: tuple[str, ...] = ()) -> Path:
    """A new venv (no pip inside it, no system site-packages) holding fleet-agent and its dependencies."""
    wheel = build_agent_wheel(work)
    house = work / "wheelhouse"
    make_wheelhouse(house, agent_requirements(extras))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    spec = f"fleet-agent[{','.join(extras)}]" if extras else "fleet-agent"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-index", "--no-compile", "--find-links", str(wheel.parent), "--find-links", str(house),
                    spec], check=True, timeout=600, env=clean_env(), cwd=work)
    return venv


def site_packages_bytes(venv: Path) -> int:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return sum(f.stat().st_size for f in site.rglob("*") if f.is_file())


def installed_names(venv: Path) -> set[str]:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return {canonicalize_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
