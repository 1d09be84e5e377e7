import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from fleet.accounts import audit
from fleet.accounts.models import Role
from fleet.lib.migrations import require_migrated


class Command(BaseCommand):
    help = "Create a Fleet user with a role (or update an existing one's role and password)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--password", help="password to set; a random one is generated and printed if omitted")
        parser.add_argument("--email", default="")

    def handle(self, *args, username: str, role: str, password: str | None, email: str, **options) -> None:
        require_migrated()
        User = get_user_model()
        generated = password is None
        if generated:
            password = secrets.token_urlsafe(15)
        user = User.objects.filter(username=username).first() or User(username=username)
        try:
            User.username_validator(username)
            validate_password(password, user)
        except ValidationError as error:
            field = "--password" if not generated else "USER"
            raise CommandError(f"{field}: {' '.join(error.messages)}") from None
        with transaction.atomic():
            created = user.pk is None
            user.role = role
            user.email = email or user.email
            # Admins also manage everything through Django's admin site.
            user.is_staff = user.is_superuser = role == Role.ADMIN
            user.set_password(password)
            user.save()
            audit.record("cli", "user.create" if created else "user.update", user, role=role)
        if generated:
            self.stdout.write(password)
        else:
            self.stdout.write(f"{'created' if created else 'updated'} {username} ({role})")
