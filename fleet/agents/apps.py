from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "fleet.agents"
    label = "agents"
