from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.inventory.services import create_enrollment_token
from fleet.lib.cli import field_errors
from fleet.lib.env import parse_duration
from fleet.lib.migrations import require_migrated


class Command(BaseCommand):
    help = "Create a one-time node enrollment token and print only the token (for scripts)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--expires", default="1h", help="lifetime such as 30m, 1h, 7d (default 1h)")
        parser.add_argument("--uses", type=int, default=1, help="how many nodes may enroll with it (default 1)")
        parser.add_argument("--note", default="", help="a note shown on the enrollment page")

    def handle(self, *args, expires: str, uses: int, note: str, **options) -> None:
        require_migrated()
        try:
            ttl = timedelta(seconds=parse_duration(expires))
        except ValueError as error:
            raise CommandError(f"--expires: {error}") from None
        with field_errors(expires="--expires", uses="--uses", note="--note"):
            _, plaintext = create_enrollment_token("cli", ttl=ttl, uses=uses, note=note)
        self.stdout.write(plaintext)
