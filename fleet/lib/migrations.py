"""Refusing to work on a database that was never migrated, with the command that fixes it."""

from __future__ import annotations

from django.core.management.base import CommandError
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor


def require_migrated() -> None:
    """Raise CommandError (no traceback) when the database lacks migrations this code needs."""
    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as error:
        raise CommandError(f"cannot read the database ({error}); check DATABASE_URL, then run "
                           "`python manage.py migrate`") from None
    if pending:
        never = not executor.loader.applied_migrations
        raise CommandError(("the database has no Fleet tables yet" if never else
                            f"the database lacks {len(pending)} migration(s)")
                           + ": run `python manage.py migrate` first")
