from django.core.management.base import BaseCommand, CommandParser

from fleet.hub.services import add_version, preview
from fleet.lib.cli import field_errors
from fleet.lib.migrations import require_migrated
from fleet.lib.units import format_bytes


class Command(BaseCommand):
    help = "Pin a model revision from the upstream hub (FLEET_HF_UPSTREAM) as a version; the engine syncs it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("repo", metavar="ORG/NAME")
        parser.add_argument("--revision", default="main", help="branch, tag or 40-hex sha (default main)")
        parser.add_argument("--allow", action="append", default=[], metavar="GLOB",
                            help="files to keep (repeatable; default: safetensors, configs, tokenizer, template)")
        parser.add_argument("--dry-run", action="store_true", help="only show what would be added")

    def handle(self, *args, repo: str, revision: str, allow: list[str], dry_run: bool, **options) -> None:
        require_migrated()
        token = ""  # FLEET_HF_TOKEN applies; per-model tokens are set in the web form (never on a command line)
        with field_errors(revision="--revision", allow_patterns="--allow", allow="--allow"):
            if dry_run:
                resolved = preview(repo, revision, token, allow or None)
                for entry in resolved.entries:
                    self.stdout.write(f"  {format_bytes(entry.size):>10}  {entry.path}")
                self.stdout.write(f"{repo}@{resolved.sha}: {len(resolved.entries)} files, "
                                  f"{format_bytes(resolved.total_size)} (skipped {len(resolved.skipped)})")
                return
            version = add_version("addmodel", repo, revision, token, allow or None)
        self.stdout.write(self.style.SUCCESS(
            f"added {repo}@{version.sha} ({version.file_count} files, {format_bytes(version.total_size)}); "
            f"{version.get_approval_display().lower()}; the engine fetches it, nodes may pull it through now"))
        self.stdout.write(version.sha)
