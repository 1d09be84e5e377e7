from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.accounts.apikeys import ApiKeyError, create_api_key
from fleet.accounts.models import ApiScope
from fleet.lib.migrations import require_migrated


class Command(BaseCommand):
    help = "Create an API key for a user and print only the key (shown once; only its hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="the username that owns the key")
        parser.add_argument("--scope", action="append", required=True, choices=ApiScope.values,
                            help="repeat for several scopes")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args, user: str, scope: list[str], name: str, **options) -> None:
        require_migrated()
        owner = get_user_model().objects.filter(username=user).first()
        if owner is None:
            raise CommandError(f"--user: no user named {user!r}; create one with createoperator")
        if not owner.has_role("viewer"):
            raise CommandError(f"--user: {user!r} has no role or is inactive; give it one with createoperator")
        try:
            _, plaintext = create_api_key("cli", owner, scope, name)
        except ApiKeyError as error:
            raise CommandError(f"--scope: {error}") from None
        self.stdout.write(plaintext)
