import os
import signal
import subprocess
import sys
import threading

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet import demo
from fleet.hub.demo_model import publish_demo_model
from fleet.lib.env import ConfigError, env_int


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
        except (ConfigError, demo.DemoError) as error:
            raise CommandError(str(error)) from None
        call_command("migrate", interactive=False, verbosity=0)
        demo.ensure_admin(self.stdout)
        publish_demo_model(self.stdout)  # a tiny Llama in the /hf mirror, ready to deploy from the Models page
        server = f"http://{host}:{port}"
        processes: list[subprocess.Popen] = []
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            daphne = subprocess.Popen(
                [sys.executable, "-m", "fleet.serve", "-b", host, "-p", str(port), "fleet.asgi:application"],
                start_new_session=True,
            )
            processes.append(daphne)
            demo.wait_for_http(f"{server}/accounts/login/", 30, daphne)
            demo.enroll_missing(fleet_nodes, server)
            for node in fleet_nodes:
                agent = demo.start_agent(node)
                processes.append(agent)
                self.stdout.write(f"  agent {node.name:<10} {node.profile:<12} pid {agent.pid}")
            ready = f"Fleet is running at {server}/ with {len(fleet_nodes)} simulated nodes"
            self.stdout.write(self.style.SUCCESS(ready))
            self.stdout.write("agent logs: var/demo/agents/<name>/agent.log — press Ctrl-C to stop")
            while not stop.wait(1):
                if daphne.poll() is not None:
                    raise CommandError(f"the server exited with code {daphne.returncode}")
        except demo.DemoError as error:
            raise CommandError(str(error)) from None
        finally:
            demo.stop_all(list(reversed(processes)))
            self.stdout.write("stopped")
