from django.apps import AppConfig


class PlaygroundConfig(AppConfig):
    name = "fleet.playground"
    label = "playground"
    verbose_name = "Playground and gateway"
    default_auto_field = "django.db.models.BigAutoField"
