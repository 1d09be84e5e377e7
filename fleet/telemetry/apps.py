from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "fleet.telemetry"
    label = "telemetry"
    verbose_name = "Telemetry"

    def ready(self) -> None:
        from django.db.models.signals import post_delete

        from fleet.inventory.models import Node
        from fleet.telemetry.signals import forget_deleted_node

        post_delete.connect(forget_deleted_node, sender=Node, dispatch_uid="telemetry.forget_deleted_node")
