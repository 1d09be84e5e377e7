from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "fleet.rollouts"
    label = "rollouts"
    verbose_name = "Deployments and rollouts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from fleet.rollouts import metrics
        from fleet.telemetry import exporter

        exporter.add_families(metrics.families)
