from django.apps import AppConfig


class HubConfig(AppConfig):
    name = "fleet.hub"
    label = "hub"
    verbose_name = "Model hub"
