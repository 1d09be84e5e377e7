"""The node's model files: the huggingface_hub cache under the agent home, the active-version pointers and
the deployer's state file (``deployments.json``). No Django, no asyncio: plain file operations.

Layout under the agent home: ``models/`` is the HF cache (``models--org--name/{blobs,snapshots}``);
``models/active/org--name`` is a symlink to the active snapshot, switched with an atomic rename.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.agent.pull import ranges_written
from fleet.agent.pullconfig import ConfigError as ConfigError  # raised by DeployConfig.from_env
from fleet.agent.pullconfig import PullConfig
from fleet.agent.state import now_iso, write_json_atomic
from fleet.lib.units import parse_size

STATE_FILE = "deployments.json"
MAX_COMMANDS = 200
DEFAULT_KEEP = 2
DEFAULT_MARGIN = 1024**3
TERMINAL = {"staged", "active", "removed", "failed"}
PARTIAL = ".fleet-partial"  # a resumable download of a blob (fleet.agent.pull)


@dataclass(frozen=True)
class DeployConfig:
    keep: int = DEFAULT_KEEP
    disk_margin: int = DEFAULT_MARGIN
    pull: PullConfig = PullConfig()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> DeployConfig:
        """FLEET_AGENT_KEEP_VERSIONS (previous versions kept for rollback), FLEET_AGENT_DISK_MARGIN and the
        fast path's FLEET_AGENT_PULL_* (see PullConfig)."""
        environ = os.environ if environ is None else environ
        keep_raw = environ.get("FLEET_AGENT_KEEP_VERSIONS", "").strip()
        margin_raw = environ.get("FLEET_AGENT_DISK_MARGIN", "").strip()
        try:
            keep = int(keep_raw) if keep_raw else DEFAULT_KEEP
            if not 0 <= keep <= 100:
                raise ValueError
        except ValueError:
            raise ConfigError(f"FLEET_AGENT_KEEP_VERSIONS={keep_raw!r} must be a whole number from 0 to 100") from None
        try:
            margin = parse_size(margin_raw) if margin_raw else DEFAULT_MARGIN
            if margin < 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"FLEET_AGENT_DISK_MARGIN={margin_raw!r} must be a size such as 2G or 500M") from None
        return cls(keep=keep, disk_margin=margin, pull=PullConfig.from_env(environ))


def repo_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def etag_of(entry: dict[str, Any]) -> str:
    lfs = entry.get("lfs") or {}
    return str(lfs.get("sha256") or lfs.get("oid") or entry.get("oid") or "")


class ModelStore:
    def __init__(self, home: Path):
        self.home = home
        self.cache = home / "models"
        self.pointers = self.cache / "active"
        self.path = home / STATE_FILE
        self.state = self._load()

    # ---- state file --------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        import json

        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        for key in ("commands", "versions", "active", "history"):
            if not isinstance(data.get(key), dict):
                data[key] = {}
        return data

    def save(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        commands = self.state["commands"]
        if len(commands) > MAX_COMMANDS:  # keep the newest; finished ones are only needed for re-reports
            for command_id in sorted(commands, key=lambda c: commands[c].get("updated_at", ""))[:-MAX_COMMANDS]:
                if commands[command_id].get("state") in TERMINAL:
                    del commands[command_id]
        write_json_atomic(self.path, self.state, mode=0o600)

    def command(self, command_id: str) -> dict[str, Any] | None:
        return self.state["commands"].get(command_id)

    def put_command(self, command_id: str, **fields: Any) -> dict[str, Any]:
        record = self.state["commands"].setdefault(command_id, {})
        record.update(fields, updated_at=now_iso())
        self.save()
        return record

    # ---- versions ----------------------------------------------------------------------------------

    def snapshot(self, repo: str, sha: str) -> Path:
        return self.cache / repo_folder(repo) / "snapshots" / sha

    def is_staged(self, repo: str, sha: str) -> bool:
        record = self.state["versions"].get(f"{repo}@{sha}")
        return bool(record) and self.snapshot(repo, sha).is_dir()

    def mark_staged(self, repo: str, sha: str, size: int) -> None:
        self.state["versions"][f"{repo}@{sha}"] = {"repo": repo, "sha": sha, "size": size, "staged_at": now_iso()}
        self.save()

    def installed(self) -> list[tuple[str, str]]:
        return [(v["repo"], v["sha"]) for v in self.state["versions"].values() if self.is_staged(v["repo"], v["sha"])]

    def active(self) -> list[tuple[str, str]]:
        return sorted(self.state["active"].items())

    def bytes_present(self, repo: str, manifest: list[dict[str, Any]]) -> int:
        """Bytes of ``manifest`` already in the cache: finished blobs plus the written ranges of partial ones."""
        blobs = self.cache / repo_folder(repo) / "blobs"
        done = 0
        for entry in manifest:
            etag, size = etag_of(entry), int(entry.get("size") or 0)
            if not etag:
                continue
            final = blobs / etag
            if final.exists():
                done += size
                continue
            written = ranges_written(final, size)
            if written is not None:
                done += written
        return done

    def blob_paths(self, repo: str, etag: str) -> tuple[Path, Path]:
        """(final, partial) paths of one blob in the HF cache."""
        blobs = self.cache / repo_folder(repo) / "blobs"
        return blobs / etag, blobs / f"{etag}{PARTIAL}"

    def link(self, repo: str, sha: str, path: str, etag: str) -> None:
        """``snapshots/<sha>/<path>`` → ``../../blobs/<etag>`` (relative), as huggingface_hub links a download."""
        pointer = self.snapshot(repo, sha) / path
        pointer.parent.mkdir(parents=True, exist_ok=True)
        blob = self.cache / repo_folder(repo) / "blobs" / etag
        tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.link")
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(blob, pointer.parent), tmp)
        os.replace(tmp, pointer)

    def clean_incomplete(self, repo: str) -> None:
        """huggingface_hub's own per-process temporary files of a killed run can never be reused."""
        blobs = self.cache / repo_folder(repo) / "blobs"
        if blobs.is_dir():
            for path in blobs.glob("*.incomplete"):
                path.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        self.cache.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.cache).free

    # ---- activation ----------------------------------------------------------------------------------

    def pointer(self, repo: str) -> Path:
        return self.pointers / repo.replace("/", "--")

    def activate(self, repo: str, sha: str) -> None:
        """Point ``active/org--name`` at the snapshot with one rename: readers see the old or the new one."""
        self.pointers.mkdir(parents=True, exist_ok=True)
        link = self.pointer(repo)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(self.snapshot(repo, sha), tmp)
        os.replace(tmp, link)
        self.state["active"][repo] = sha
        history = [s for s in self.state["history"].get(repo, []) if s != sha]
        self.state["history"][repo] = [sha, *history]
        self.save()

    def pointed(self, repo: str) -> str | None:
        try:
            return Path(os.readlink(self.pointer(repo))).name
        except OSError:
            return None

    def previous(self, repo: str) -> str | None:
        active = self.state["active"].get(repo)
        for sha in self.state["history"].get(repo, []):
            if sha != active and self.is_staged(repo, sha):
                return sha
        return None

    def remove(self, repo: str, sha: str) -> int:
        """Delete a version's snapshot and the blobs no other snapshot links to; returns bytes freed.

        Not huggingface_hub's ``delete_revisions``: for a repo's last revision that removes the whole repo
        folder, including the partial files of another version of the repo being deployed at that moment.
        """
        folder = self.cache / repo_folder(repo)
        snapshot = self.snapshot(repo, sha)
        targets = {link.resolve() for link in snapshot.rglob("*") if link.is_symlink()} if snapshot.is_dir() else set()
        shutil.rmtree(snapshot, ignore_errors=True)
        still_used = set()
        snapshots = folder / "snapshots"
        if snapshots.is_dir():
            still_used = {link.resolve() for link in snapshots.rglob("*") if link.is_symlink()}
        freed = 0
        for target in targets - still_used:
            try:
                if target.parent.name == "blobs" and target.parent.parent == folder:
                    freed += target.stat().st_size
                    target.unlink()
            except OSError:
                continue
        refs = folder / "refs"
        if refs.is_dir():
            for ref in refs.rglob("*"):
                if ref.is_file() and ref.read_text(encoding="utf-8").strip() == sha:
                    ref.unlink(missing_ok=True)
        self.state["versions"].pop(f"{repo}@{sha}", None)
        self.state["history"][repo] = [s for s in self.state["history"].get(repo, []) if s != sha]
        self.save()
        return freed

    def prune(self, repo: str, keep: int) -> list[str]:
        """Remove staged versions of ``repo`` beyond the active one and the ``keep`` previous ones."""
        active = self.state["active"].get(repo)
        keep_set = {active, *[s for s in self.state["history"].get(repo, []) if s != active][:keep]}
        busy = {c.get("sha") for c in self.state["commands"].values() if c.get("state") not in TERMINAL}
        removed = []
        for record in list(self.state["versions"].values()):
            if record["repo"] == repo and record["sha"] not in keep_set and record["sha"] not in busy:
                self.remove(repo, record["sha"])
                removed.append(record["sha"])
        return removed

    def discard_corrupt(self, repo: str, sha: str, paths: list[str]) -> None:
        """Delete the files that failed verification (link and blob), so a retry downloads them again."""
        snapshot = self.snapshot(repo, sha)
        for rel in paths:
            link = snapshot / rel
            try:
                target = link.resolve()
                link.unlink()
                if target != link and target.is_file():
                    target.unlink()
            except OSError:
                continue
