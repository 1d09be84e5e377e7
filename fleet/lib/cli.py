"""The edge of the management commands: a service's FieldError becomes Django's CommandError (a clear
one-line message, no traceback), written the way the command's user typed the field."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import CommandError

from fleet.lib.errors import FieldError


@contextmanager
def field_errors(**spelled: str) -> Iterator[None]:
    """``with field_errors(uses="--uses"):`` turns a FieldError into ``CommandError("--uses: ...")``; a field
    not named here is written as the service named it."""
    try:
        yield
    except FieldError as error:
        raise CommandError(f"{spelled.get(error.field, error.field)}: {error.message}") from None
