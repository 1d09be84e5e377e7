"""The node side of model commands: deploy (download through the mirror, verify, stage), activate, roll
back, remove. Idempotent by command_id; the state file makes a restarted agent resume and re-report.

Small files are huggingface_hub's own ``snapshot_download`` against the server's ``/hf`` mirror with the node
secret as the token, into the agent's HF cache. Files over FLEET_AGENT_PULL_MIN take the fast path at the
same time (fleet.agent.pull: parallel Range requests, resumable per range, sha256 proven as the ranges land)
and are linked into the same snapshot, so huggingface_hub, transformers and vLLM find them as if
snapshot_download had fetched them. Every other file is hashed against the manifest (git-sha1 / sha256, with
huggingface_hub's own hash helpers) before a version counts as staged. Nothing here imports Django.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fleet.agent.modelstore import TERMINAL, DeployConfig, ModelStore, etag_of
from fleet.agent.protocol import (
    MAX_RATE,
    Activate,
    CommandEvent,
    Deploy,
    ModelRef,
    Remove,
    Rollback,
    SiteCacheOffer,
)
from fleet.agent.pull import Puller, PullError, PullRun, file_specs
from fleet.lib.units import format_bytes

log = logging.getLogger("fleet.agent.deployer")
PROGRESS_EVERY = 1.0
CACHE_PROBE_TIMEOUT = 2.0
CACHE_RETRY_AFTER = 60.0  # seconds a failed site cache is skipped before deploys try it again
BUSY_RETRY_FOR = 6 * 3600.0  # how long a deploy waits on "503 still fetching from upstream" before failing


def _retry_after(value: str | None) -> int:
    try:
        return max(1, min(60, int(value or 10)))
    except ValueError:
        return 10
Send = Callable[[CommandEvent], Awaitable[None]]


class CommandFailed(Exception):
    pass


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function`` in a daemon thread: unlike asyncio.to_thread, a stopping agent does not wait for an
    hour-long download to end (the partial files stay and the next run resumes them)."""
    import threading

    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def target() -> None:
        try:
            result = function(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(lambda error=exc: future.done() or future.set_exception(error))
        else:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(result))

    threading.Thread(target=target, name="fleet-deployer", daemon=True).start()
    return await future


def explain_download_error(error: Exception, repo: str, sha: str) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status == 401:
        return "the mirror refused this node's secret (revoked or rotated?); re-enroll the node"
    if isinstance(error, GatedRepoError):
        return f"the mirror does not serve {repo}@{sha[:12]} yet (awaiting approval in Fleet)"
    if isinstance(error, RepositoryNotFoundError):
        return f"the mirror has no repository {repo}"
    if isinstance(error, RevisionNotFoundError):
        return f"the mirror has no version {repo}@{sha[:12]} (deleted in Fleet?)"
    if isinstance(error, HfHubHTTPError):
        return f"the mirror answered an error: {str(error).splitlines()[0]}"
    return f"download failed: {type(error).__name__}: {error}"[:500]


class Deployer:
    def __init__(self, home: Path, secret: str, server: str, config: DeployConfig | None = None):
        self.store = ModelStore(home)
        self.secret = secret
        self.server = server.rstrip("/")
        self.mirror_url = ""
        self.site: SiteCacheOffer | None = None  # the site cache the server named in welcome, if any
        self.cache_down_until = 0.0  # after the cache failed, deploys go to the server until then
        self.config = config or DeployConfig.from_env()
        self.send: Send | None = None
        self.tasks: dict[str, asyncio.Task] = {}
        self.progress: dict[str, tuple[int, int]] = {}
        self.lock = asyncio.Lock()  # activation, removal and state changes happen one at a time
        self.on_activated: Callable[[str], None] | None = None  # the runtime supervisor: repo's version changed
        self.puller: Puller | None = None  # made on first use: the node-wide range slots and rate cap

    # ---- what hello reports ----------------------------------------------------------------------

    def installed(self) -> list[ModelRef]:
        return [ModelRef(repo=repo, sha=sha) for repo, sha in self.store.installed()][:256]

    def active(self) -> list[ModelRef]:
        return [ModelRef(repo=repo, sha=sha) for repo, sha in self.store.active()][:16]

    def active_snapshots(self) -> list[tuple[str, str, Path]]:
        """(repo, sha, snapshot folder) of every active version: what the runtimes serve."""
        return [(repo, sha, self.store.snapshot(repo, sha)) for repo, sha in self.store.active()]

    def in_flight(self) -> list[str]:
        commands = self.store.state["commands"]
        return [cid for cid, record in commands.items() if record.get("state") not in TERMINAL][:256]

    # ---- connection ----------------------------------------------------------------------------------

    def attach(self, send: Send, mirror_url: str, site: SiteCacheOffer | None = None) -> None:
        self.send = send
        self.mirror_url = mirror_url.rstrip("/") if mirror_url else f"{self.server}/hf"
        self.site = site
        self.resume()

    def routes(self) -> list[tuple[str, str, bool]]:
        """(mirror URL, token, via the site cache?) to try in order: the site cache, then the server.
        Kept while the socket is down: a node cut off from the server still reaches its site's cache."""
        server = (self.mirror_url or f"{self.server}/hf", self.secret, False)
        site = self.site
        if site is not None and site.url and site.token and time.monotonic() >= self.cache_down_until:
            return [(site.url.rstrip("/") + "/hf", site.token, True), server]
        return [server]

    def _cache_up(self, mirror: str) -> bool:
        """A quick connect to the site cache: huggingface_hub would retry a refused connection for ~25 s."""
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(mirror)
        try:
            with socket.create_connection((parts.hostname, parts.port or 80), timeout=CACHE_PROBE_TIMEOUT):
                return True
        except OSError as exc:
            log.warning("site cache %s is unreachable (%s); pulling from the server", mirror, exc)
            return False

    def detach(self) -> None:
        self.send = None

    async def emit(self, command_id: str, state: str, *, done: int | None = None, total: int | None = None,
                   error: str | None = None, rate: float | None = None, persist: bool = True) -> None:
        """``rate``: bytes per second, of the last interval while downloading, of the whole pull after it."""
        rate = None if rate is None else max(0, min(MAX_RATE, int(rate)))
        if persist:
            fields: dict[str, Any] = {"state": state, "error": error}
            if done is not None:
                fields.update(bytes_done=done, bytes_total=total)
            if rate is not None:
                fields["bytes_per_second"] = rate
            self.store.put_command(command_id, **fields)
        if self.send is None:
            return
        try:
            await self.send(CommandEvent(type="event", command_id=command_id, state=state, bytes_done=done,
                                         bytes_total=total, error=error[:500] if error else None,
                                         bytes_per_second=rate))
        except Exception as exc:  # the connection dropped; the state file and the next hello carry it
            log.debug("could not send event for %s: %s", command_id, exc)

    def resume(self) -> None:
        """Restart commands a previous run left unfinished (a killed agent resumes its downloads)."""
        for command_id, record in list(self.store.state["commands"].items()):
            if record.get("state") not in TERMINAL and command_id not in self.tasks and record.get("kind"):
                log.info("resuming %s %s@%s", record["kind"], record.get("repo"), str(record.get("sha"))[:12])
                self._start(command_id, record)

    # ---- commands ------------------------------------------------------------------------------------

    async def handle(self, frame: Deploy | Activate | Rollback | Remove) -> None:
        record = self.store.command(frame.command_id)
        if record and record.get("state") in TERMINAL:  # already done: report, do not redo
            await self.emit(frame.command_id, record["state"], done=record.get("bytes_done"),
                            total=record.get("bytes_total"), error=record.get("error"),
                            rate=record.get("bytes_per_second"), persist=False)
            return
        if frame.command_id in self.tasks:
            done, total = self.progress.get(frame.command_id, (None, None))
            await self.emit(frame.command_id, record.get("state", "accepted") if record else "accepted",
                            done=done, total=total, persist=False)
            return
        record = {"kind": frame.type, "repo": frame.repo, "sha": getattr(frame, "sha", None), "state": "accepted"}
        if isinstance(frame, Deploy):
            record.update(activate=frame.activate, manifest=[
                {"path": e.get("path"), "size": e.get("size"), "oid": e.get("oid"), "lfs": e.get("lfs")}
                for e in frame.manifest])
        self.store.put_command(frame.command_id, **record)
        self._start(frame.command_id, self.store.command(frame.command_id))

    def _start(self, command_id: str, record: dict[str, Any]) -> None:
        runner = {"deploy": self._deploy, "activate": self._activate_cmd, "remove": self._remove,
                  "rollback": self._rollback}.get(record["kind"])
        if runner is None:
            return
        task = asyncio.create_task(self._guard(command_id, runner, record))
        self.tasks[command_id] = task
        task.add_done_callback(lambda _t: (self.tasks.pop(command_id, None), self.progress.pop(command_id, None)))

    async def _guard(self, command_id: str, runner, record: dict[str, Any]) -> None:
        try:
            await runner(command_id, record)
        except CommandFailed as failure:
            log.warning("%s %s failed: %s", record["kind"], command_id, failure)
            await self.emit(command_id, "failed", error=str(failure))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s %s crashed", record["kind"], command_id)
            await self.emit(command_id, "failed", error=f"agent error: {type(exc).__name__}: {exc}")

    def fast_entries(self, manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The manifest's LFS files over FLEET_AGENT_PULL_MIN: fetched by fleet.agent.pull."""
        return [entry for entry in manifest if int(entry.get("size") or 0) > self.config.pull.min_size
                and (entry.get("lfs") or {}).get("sha256") and etag_of(entry)]

    def _pull(self, repo: str, sha: str, entries: list[dict[str, Any]]) -> PullRun:
        from huggingface_hub import hf_hub_url

        if self.puller is None:
            self.puller = Puller(self.config.pull, self.secret)
        specs = file_specs(entries, lambda path: hf_hub_url(repo, path, revision=sha, endpoint=self.mirror_url),
                           lambda etag: self.store.blob_paths(repo, etag)[0])
        return self.puller.prepare(specs)

    async def _deploy(self, command_id: str, record: dict[str, Any]) -> None:
        repo, sha, manifest = record["repo"], record["sha"], record.get("manifest") or []
        total = sum(int(entry.get("size") or 0) for entry in manifest)
        rate = record.get("bytes_per_second")
        if not self.store.is_staged(repo, sha):
            present = self.store.bytes_present(repo, manifest)
            free = self.store.free_bytes()
            if total - present + self.config.disk_margin > free:
                raise CommandFailed(
                    f"not enough disk space: {repo}@{sha[:12]} needs {format_bytes(total - present)} more plus a "
                    f"{format_bytes(self.config.disk_margin)} margin (FLEET_AGENT_DISK_MARGIN), "
                    f"{format_bytes(free)} free under {self.store.cache}")
            await self.emit(command_id, "downloading", done=present, total=total)
            fast = self.fast_entries(manifest)
            rest = [entry for entry in manifest if entry not in fast]
            pull = self._pull(repo, sha, fast)
            started = last_at = time.monotonic()
            last = present
            download = asyncio.ensure_future(in_thread(self._download, repo, sha, rest, pull))
            while not download.done():
                await asyncio.wait({download}, timeout=PROGRESS_EVERY)
                done = min(total, self.store.bytes_present(repo, rest) + pull.bytes_done())
                now = time.monotonic()
                self.progress[command_id] = (done, total)
                if not download.done():
                    await self.emit(command_id, "downloading", done=done, total=total, persist=False,
                                    rate=max(0, done - last) / max(1e-3, now - last_at))
                last, last_at = done, now
            download.result()
            await self.emit(command_id, "verifying", done=total, total=total)
            await in_thread(self._verify, repo, sha, manifest, pull.verified())
            rate = (total - present) / max(1e-3, time.monotonic() - started) if total > present else None
            async with self.lock:
                self.store.mark_staged(repo, sha, total)
            log.info("staged %s@%s (%s%s)", repo, sha[:12], format_bytes(total),
                     f", pulled at {format_bytes(rate)}/s" if rate else "")
        if record.get("activate"):
            if rate is not None:
                self.store.put_command(command_id, bytes_per_second=int(min(rate, MAX_RATE)))
            await self._activate(command_id, repo, sha)
        else:
            await self.emit(command_id, "staged", done=total, total=total, rate=rate)

    def _download(self, repo: str, sha: str, rest: list[dict[str, Any]], pull: PullRun) -> None:
        """Through the site cache when the server named one, from the server when it fails (written ranges
        and finished files stay: the server sends only what the cache had not)."""
        from huggingface_hub import hf_hub_url

        routes = self.routes()
        for mirror, token, via_cache in routes:
            pull.retarget(lambda path, m=mirror: hf_hub_url(repo, path, revision=sha, endpoint=m), token, via_cache)
            if not via_cache:
                return self._download_from(repo, sha, rest, pull, mirror, token)
            if not self._cache_up(mirror):
                self.cache_down_until = time.monotonic() + CACHE_RETRY_AFTER
                continue
            try:
                self._download_from(repo, sha, rest, pull, mirror, token)
                log.info("pulled %s@%s through the site cache %s", repo, sha[:12], mirror)
                return
            except Exception as exc:  # any failure of the cache: the server is the fallback
                self.cache_down_until = time.monotonic() + CACHE_RETRY_AFTER
                log.warning("site cache %s failed for %s@%s (%s); pulling the rest from the server", mirror,
                            repo, sha[:12], str(exc)[:300])

    def _download_from(self, repo: str, sha: str, rest: list[dict[str, Any]], pull: PullRun, mirror: str,
                       token: str) -> None:
        """The small files through snapshot_download while the big ones take the fast path, both at once."""
        from concurrent.futures import ThreadPoolExecutor

        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        self.store.clean_incomplete(repo)
        patterns = [glob.escape(entry["path"]) for entry in rest if entry.get("path")]
        deadline = time.monotonic() + BUSY_RETRY_FOR
        while True:
            try:
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-hf") as pool:
                    small = pool.submit(snapshot_download, repo, revision=sha, endpoint=mirror,
                                        token=token, cache_dir=self.store.cache, etag_timeout=30,
                                        allow_patterns=patterns) if patterns else None
                    try:
                        pull.run()
                    finally:
                        if small is not None:
                            small.result()
                for spec in pull.specs:
                    self.store.link(repo, sha, spec.path, spec.sha256)
                self.store.snapshot(repo, sha).mkdir(parents=True, exist_ok=True)
                return
            except PullError as exc:
                raise CommandFailed(f"download failed: {exc}"[:500]) from None
            except HfHubHTTPError as exc:
                response = getattr(exc, "response", None)
                if getattr(response, "status_code", None) != 503 or time.monotonic() > deadline:
                    raise CommandFailed(explain_download_error(exc, repo, sha)) from None
                # The server is still fetching the file from upstream (nginx mode): wait and resume.
                wait = _retry_after(response.headers.get("Retry-After"))
                log.info("the mirror is still fetching %s@%s; retrying in %ds", repo, sha[:12], wait)
                time.sleep(wait)
            except Exception as exc:
                raise CommandFailed(explain_download_error(exc, repo, sha)) from None

    def _verify(self, repo: str, sha: str, manifest: list[dict[str, Any]], proven: set[str]) -> None:
        """Every file of the manifest is in the snapshot with the right git-sha1 / sha256 (the checks of
        huggingface_hub's verify_repo_checksums, without hashing again what the fast path just proved)."""
        from huggingface_hub.utils.sha import git_hash, sha_fileobj

        snapshot = self.store.snapshot(repo, sha)
        mismatches, missing = [], []
        for entry in manifest:
            path = snapshot / entry["path"]
            if not path.is_file():
                missing.append(entry["path"])
                continue
            if entry["path"] in proven:
                continue
            sha256 = (entry.get("lfs") or {}).get("sha256")
            with open(path, "rb") as handle:
                algorithm, expected = ("sha256", sha256) if sha256 else ("git-sha1", entry.get("oid") or "")
                actual = sha_fileobj(handle).hex() if sha256 else git_hash(handle.read())
            if actual != str(expected).lower():
                mismatches.append({"path": entry["path"], "algorithm": algorithm, "expected": str(expected),
                                   "actual": actual})
        bad = [m["path"] for m in mismatches]
        if bad or missing:
            self.store.discard_corrupt(repo, sha, bad)
            detail = "; ".join(f"{m['path']} {m['algorithm']} mismatch (expected {m['expected'][:16]}…, got "
                               f"{m['actual'][:16]}…)" for m in mismatches[:3])
            if missing:
                detail += ("; " if detail else "") + f"missing: {', '.join(missing[:5])}"
            raise CommandFailed(f"verification failed, not staged: {detail}; the bad files were deleted, a new "
                                "deploy downloads them again")

    async def _activate(self, command_id: str, repo: str, sha: str) -> None:
        async with self.lock:
            if not self.store.is_staged(repo, sha):
                raise CommandFailed(f"{repo}@{sha[:12]} is not staged on this node; deploy it first")
            await self.emit(command_id, "activating")
            self.store.activate(repo, sha)
            removed = self.store.prune(repo, self.config.keep)
        log.info("activated %s@%s%s", repo, sha[:12], f"; removed old {', '.join(s[:12] for s in removed)}"
                 if removed else "")
        if self.on_activated is not None:
            self.on_activated(repo)
        size = int(self.store.state["versions"].get(f"{repo}@{sha}", {}).get("size") or 0)
        rate = (self.store.command(command_id) or {}).get("bytes_per_second")
        await self.emit(command_id, "active", done=size, total=size, rate=rate)

    async def _activate_cmd(self, command_id: str, record: dict[str, Any]) -> None:
        await self._activate(command_id, record["repo"], record["sha"])

    async def _rollback(self, command_id: str, record: dict[str, Any]) -> None:
        previous = self.store.previous(record["repo"])
        if previous is None:
            raise CommandFailed(f"no previous version of {record['repo']} is kept on this node to roll back to")
        self.store.put_command(command_id, sha=previous)
        await self._activate(command_id, record["repo"], previous)

    async def _remove(self, command_id: str, record: dict[str, Any]) -> None:
        repo, sha = record["repo"], record["sha"]
        async with self.lock:
            if self.store.state["active"].get(repo) == sha:
                raise CommandFailed(f"{repo}@{sha[:12]} is the active version; activate another one first")
            freed = await in_thread(self.store.remove, repo, sha)
        log.info("removed %s@%s (%s freed)", repo, sha[:12], format_bytes(freed))
        await self.emit(command_id, "removed")
