from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from fleet.accounts.apikeys import create_api_key
from fleet.accounts.models import ApiScope
from fleet.lib.cli import field_errors
from fleet.lib.env import parse_duration
from fleet.lib.migrations import require_migrated


class Command(BaseCommand):
    help = "Create an API key for a user and print only the key (shown once; only its hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="the username that owns the key")
        parser.add_argument("--scope", action="append", required=True, choices=ApiScope.values,
                            help="repeat for several scopes")
        parser.add_argument("--name", default="", help="a label for the key")
        parser.add_argument("--expires", default="", help="lifetime such as 30d or 12h (default: never expires)")
        parser.add_argument("--model", action="append", default=[],
                            help="a model the key may use (chat scope); repeat for several; default: all")

    def handle(self, *args, user: str, scope: list[str], name: str, expires: str, model: list[str],
               **options) -> None:
        require_migrated()
        owner = get_user_model().objects.filter(username=user).first()
        if owner is None:
            raise CommandError(f"--user: no user named {user!r}; create one with createoperator")
        if not owner.has_role("viewer"):
            raise CommandError(f"--user: {user!r} has no role or is inactive; give it one with createoperator")
        expires_at = None
        if expires:
            try:
                expires_at = timezone.now() + timedelta(seconds=parse_duration(expires))
            except ValueError as error:
                raise CommandError(f"--expires: {error}") from None
        with field_errors(scope="--scope", name="--name", expires="--expires", allowed_models="--model"):
            _, plaintext = create_api_key("cli", owner, scope, name, expires_at=expires_at, allowed_models=model)
        self.stdout.write(plaintext)
