import os
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet import demo
from fleet.hub import smollm2
from fleet.hub.catalog import find_version
from fleet.hub.demo_model import DEMO_REPO, publish_demo_model, publish_smollm2, rollout_bytes
from fleet.hub.models import ModelVersion
from fleet.inventory.models import NodeKind
from fleet.lib.env import ConfigError, env_int
from fleet.lib.stopsignals import StopSignals
from fleet.lib.units import format_bytes


def _labels(deployment) -> str:
    return ", ".join(f"{key}={value}" for key, value in deployment.selector.items())


class Command(BaseCommand):
    help = "Run the embedded demo: Daphne on 127.0.0.1 and a simulated fleet of real agent processes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, help="default FLEET_DEMO_PORT or 8000")
        parser.add_argument("--nodes", help=f"PROFILE:COUNT list (default FLEET_DEMO_NODES or {demo.DEFAULT_NODES})")

    def handle(self, *args, host: str, port: int | None, nodes: str | None, **options) -> None:
        try:
            port = port or env_int("FLEET_DEMO_PORT", 8000, minimum=1, maximum=65535)
            fleet_nodes = demo.parse_nodes(nodes or os.environ.get("FLEET_DEMO_NODES", demo.DEFAULT_NODES))
            demo.ensure_port_free(host, port)
        except (ConfigError, demo.DemoError) as error:
            raise CommandError(str(error)) from None
        call_command("migrate", interactive=False, verbosity=0)
        demo.ensure_admin(self.stdout)
        server = f"http://{host}:{port}"
        processes: list[subprocess.Popen] = []
        stop = threading.Event()
        signals = StopSignals(stop).install()  # a handler calling stop.set() could deadlock: see there
        try:
            # SmolLM2's one-time conversion (a child process) runs while the server starts and nodes enroll.
            converting = ThreadPoolExecutor(1, thread_name_prefix="smollm2").submit(
                smollm2.ensure_converted, Path(settings.FLEET_DEMO_MODELS) / smollm2.FOLDER, self.stdout.write, stop)
            os.environ.setdefault("FLEET_ROLLOUT_MIN_READY_SECONDS", "10")  # the server's default soak, for Daphne
            tiny = find_version(DEMO_REPO, publish_demo_model(self.stdout))  # a tiny Llama in the /hf mirror
            command, access_log = demo.server_command(host, port)
            daphne = subprocess.Popen(command, start_new_session=True, env=demo.server_env())
            processes.append(daphne)
            demo.wait_for_http(f"{server}/accounts/login/", 30, daphne)
            if daphne.poll() is not None:  # another server answered (the port was taken since the check)
                raise demo.DemoError(f"the server exited with code {daphne.returncode}; is port {port} taken?")
            demo.enroll_missing(fleet_nodes, server)
            models = {NodeKind.GPU_SERVER: self._smollm2(converting) or tiny, NodeKind.EDGE_DEVICE: tiny}
            if stop.is_set():
                return
            for deployment in demo.ensure_deployments(models, self.stdout):
                self.stdout.write(f"deployment {deployment.name}: {deployment.repo} "
                                  f"{deployment.desired_version.revision} on the nodes labelled {_labels(deployment)}")
            for node in fleet_nodes:
                agent = demo.start_agent(node)
                processes.append(agent)
                self.stdout.write(f"  agent {node.name:<10} {node.profile:<12} pid {agent.pid}")
            ready = f"Fleet is running at {server}/ with {len(fleet_nodes)} simulated nodes"
            self.stdout.write(self.style.SUCCESS(ready))
            where = "below" if access_log == "-" else access_log
            self.stdout.write(f"agent logs: var/demo/agents/<name>/agent.log, access log: {where}; "
                              "warnings and errors show here — press Ctrl-C to stop")
            while not stop.wait(1):
                if daphne.poll() is not None:
                    raise CommandError(f"the server exited with code {daphne.returncode}")
        except demo.DemoError as error:
            raise CommandError(str(error)) from None
        finally:
            stop.set()  # also ends a conversion still running
            demo.stop_all(list(reversed(processes)))
            signals.close()
            self.stdout.write("stopped")

    def _smollm2(self, converting: Future) -> ModelVersion | None:
        """SmolLM2 v1 once published (v2 and v3-broken beside it), or None with a warning when it cannot be
        built here: the demo then runs the tiny model everywhere."""
        try:
            converting.result()
            versions = publish_smollm2(self.stdout)
        except (smollm2.SmolLM2Error, OSError) as error:
            self.stdout.write(self.style.WARNING(f"SmolLM2 left out: {error}"))
            return None
        v1, v2 = versions["v1"], versions["v2"]
        weights = {version.files.get(path=smollm2.WEIGHTS).lfs_sha256 for version in (v1, v2)}
        shared = f"v1 and v2 share {smollm2.WEIGHTS} (sha256 {min(weights)[:12]})" if len(weights) == 1 else ""
        self.stdout.write(f"{smollm2.REPO}: {shared or 'v1 and v2 have different weights'}; rolling v1 → v2 moves "
                          f"{format_bytes(rollout_bytes(v1, v2))} of {format_bytes(v2.total_size)}")
        return v1
