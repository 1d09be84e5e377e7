from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "fleet.rollouts"
    label = "rollouts"
    verbose_name = "Deployments and rollouts"
    default_auto_field = "django.db.models.BigAutoField"
