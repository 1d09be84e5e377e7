import signal
import threading

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from fleet import engine


class Command(BaseCommand):
    help = "Run Fleet's background work (offline detection, hub sync, retention, rollouts); one engine leads."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true",
                            help="run every task once now, leading or not (they are idempotent), and exit")

    def handle(self, *args, once: bool, **options) -> None:
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            raise CommandError("the database has unapplied migrations: run `python manage.py migrate` first")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        engine.run(stop, once=once)
