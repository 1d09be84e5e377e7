from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.hub import commands
from fleet.hub.models import MANUAL_COMMAND_KINDS, CommandKind, ModelVersion
from fleet.inventory.models import Node
from fleet.lib.cli import field_errors
from fleet.lib.migrations import require_migrated


class Command(BaseCommand):
    help = "Send a model command to one node: deploy (optionally --activate), activate, remove or rollback."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kind", choices=[kind.value for kind in MANUAL_COMMAND_KINDS])
        parser.add_argument("--node", required=True, help="node name")
        parser.add_argument("--repo", required=True, metavar="ORG/NAME")
        parser.add_argument("--revision", help="version: its revision name or sha (not for rollback)")
        parser.add_argument("--activate", action="store_true", help="with deploy: activate once staged")

    def handle(self, *args, kind: str, node: str, repo: str, revision: str | None, activate: bool, **options):
        require_migrated()
        target = Node.objects.filter(name=node).first()
        if target is None:
            raise CommandError(f"--node: no node named {node!r}")
        version = None
        if kind != CommandKind.ROLLBACK:
            if not revision:
                raise CommandError(f"--revision: {kind} needs the version (a revision name or sha)")
            versions = ModelVersion.objects.select_related("model").filter(model__repo_id=repo)
            version = (versions.filter(sha=revision).first()
                       or versions.filter(revision=revision).order_by("-created_at").first())
            if version is None:
                raise CommandError(f"--revision: {repo}@{revision} is not registered; add it first")
        with field_errors(kind="kind", node="--node", version="--revision"):
            command = commands.create("deploymodel", target, kind, version, activate=activate, repo=repo)
        self.stdout.write(command.command_id)
