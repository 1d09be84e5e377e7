from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "fleet.agents"
    label = "agents"

    def ready(self) -> None:
        from fleet.agents import arrivals
        from fleet.telemetry import flusher

        flusher.register_arrivals(arrivals)  # the flusher writes fast-path hellos in bulk, each tick
