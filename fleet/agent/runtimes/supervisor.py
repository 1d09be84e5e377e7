"""Keeps one runtime process per active model version: the deployer calls ``sync`` whenever the active set
changes (activate, rollback), the agent calls ``start`` when it starts and ``close`` when it stops.

A repo switching versions stops its old process before the new one loads: a vLLM process claims most of
the GPU memory, so two versions side by side would not fit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from fleet.agent.protocol import RuntimeStatus
from fleet.agent.runtimes import NONE
from fleet.agent.runtimes.base import Adapter
from fleet.agent.runtimes.process import RuntimeProcess, RuntimeSettings

log = logging.getLogger("fleet.agent.runtime")
ActiveVersions = Callable[[], list[tuple[str, str, Path]]]  # (repo, sha, snapshot folder)
Listener = Callable[[bool], None]  # True: a state changed; False: only counters did
MAX_SERVING = 16  # Hello.serving's bound


class Supervisor:
    def __init__(self, adapter: Adapter | None, active: ActiveVersions, settings: RuntimeSettings | None = None):
        self.adapter = adapter
        self.active = active
        self.settings = settings or RuntimeSettings.from_env()
        self.processes: dict[str, RuntimeProcess] = {}
        self.listeners: list[Listener] = []
        self.stopping: dict[str, asyncio.Task] = {}
        self.waiting: set[asyncio.Task] = set()  # new versions waiting for their predecessor to stop
        self.closed = False

    @property
    def runtime(self) -> str:
        return self.adapter.name if self.adapter else NONE

    # ---- what others read ----------------------------------------------------------------------------

    def statuses(self) -> list[RuntimeStatus]:
        return [process.status() for process in list(self.processes.values())[:MAX_SERVING]]

    def get(self, repo: str) -> RuntimeProcess | None:
        return self.processes.get(repo)

    def notify(self, state_changed: bool) -> None:
        for listener in list(self.listeners):
            try:
                listener(state_changed)
            except Exception:
                log.exception("runtime listener failed")

    # ---- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start runtimes for the versions already active (an agent restart)."""
        self.sync()

    def sync(self, retry: str | None = None) -> None:
        """Make the processes match the active versions; ``retry``: a repo just (re)activated, whose runtime
        is restarted if it had given up."""
        if self.adapter is None or self.closed:
            return
        desired = {repo: (sha, snapshot) for repo, sha, snapshot in self.active()}
        changed = False
        for repo, process in list(self.processes.items()):
            gave_up = retry == repo and process.given_up
            if repo not in desired or desired[repo][0] != process.sha or gave_up:
                del self.processes[repo]
                self._stop_later(repo, process)
                changed = True
        for repo, (sha, snapshot) in desired.items():
            if repo in self.processes:
                continue
            if len(self.processes) >= MAX_SERVING:
                log.warning("not starting a runtime for %s: at most %d runtimes per node", repo, MAX_SERVING)
                continue
            process = RuntimeProcess(self.adapter, repo, sha, snapshot, self.settings, self.notify)
            self.processes[repo] = process
            changed = True
            previous = self.stopping.get(repo)
            if previous is None:
                process.start()
            else:
                process.reason = "waiting for the previous version to stop"
                waiting = asyncio.create_task(self._start_after(previous, process))
                self.waiting.add(waiting)
                waiting.add_done_callback(self.waiting.discard)
        if changed:
            self.notify(True)

    def _stop_later(self, repo: str, process: RuntimeProcess) -> None:
        task = asyncio.create_task(process.stop())
        self.stopping[repo] = task
        task.add_done_callback(lambda _t: self.stopping.pop(repo, None) if self.stopping.get(repo) is task else None)

    async def _start_after(self, previous: asyncio.Task, process: RuntimeProcess) -> None:
        await asyncio.wait({previous})
        if self.processes.get(process.repo) is process and not self.closed:
            process.start()

    async def close(self) -> None:
        """Stop every runtime (SIGTERM, then SIGKILL after the grace period)."""
        self.closed = True
        processes = list(self.processes.values())
        self.processes.clear()
        await asyncio.gather(*(process.stop() for process in processes), *self.stopping.values(), *self.waiting,
                             return_exceptions=True)
        if processes:
            self.notify(True)
