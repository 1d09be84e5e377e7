from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.hub import store
from fleet.hub.importer import import_folder
from fleet.lib.cli import field_errors
from fleet.lib.migrations import require_migrated
from fleet.lib.units import format_bytes


class Command(BaseCommand):
    help = "Import a local model folder (a carried-in disk, a save_pretrained output) as a pinned version."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="the folder holding config.json, *.safetensors, tokenizer files ...")
        parser.add_argument("--repo", required=True, metavar="ORG/NAME", help="repo id nodes will ask for")
        parser.add_argument("--revision", required=True, metavar="NAME", help="revision name, e.g. main or v1")
        parser.add_argument("--allow", action="append", default=[], metavar="GLOB",
                            help="only import matching files (repeatable; default: everything)")

    def handle(self, *args, path: str, repo: str, revision: str, allow: list[str], **options) -> None:
        require_migrated()
        try:
            with field_errors(repo="--repo", revision="--revision", allow="--allow"):
                version, created = import_folder("importmodel", Path(path).expanduser(), repo, revision, allow or None)
        except (store.StoreError, OSError) as error:
            raise CommandError(str(error)) from None
        size = format_bytes(version.total_size)
        if created:
            self.stdout.write(self.style.SUCCESS(
                f"imported {repo}@{version.sha} (revision {revision}): {version.file_count} files, {size}"))
        else:
            self.stdout.write(f"already imported as {repo}@{version.sha} (revision {version.revision!r}); "
                              "nothing changed")
        self.stdout.write(version.sha)
