"""Management commands turn a service's FieldError into one CommandError line, in the user's spelling."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from fleet.accounts.apikeys import ApiKeyError
from fleet.hub.catalog import CatalogError
from fleet.inventory.services import InventoryError
from fleet.lib.cli import field_errors
from fleet.lib.errors import FieldError


def test_a_field_error_becomes_a_command_error_naming_the_option():
    with pytest.raises(CommandError) as caught, field_errors(uses="--uses"):
        raise InventoryError("uses", "must be from 1 to 1000")
    assert str(caught.value) == "--uses: must be from 1 to 1000"
    assert caught.value.__suppress_context__  # no chained traceback
    with pytest.raises(CommandError, match="^path: not a folder$"), field_errors(uses="--uses"):
        raise CatalogError("path", "not a folder")


def test_other_errors_pass_through():
    with pytest.raises(KeyError), field_errors(uses="--uses"):
        raise KeyError("x")


def test_every_service_error_is_a_field_error():
    assert issubclass(ApiKeyError, FieldError) and issubclass(CatalogError, FieldError)
    error = ApiKeyError("the expiry must be in the future", "expires")
    assert (error.field, error.message, str(error)) == ("expires", "the expiry must be in the future",
                                                        "the expiry must be in the future")


@pytest.mark.django_db
def test_createenrollmenttoken_says_which_option():
    with pytest.raises(CommandError, match="^--uses: "):
        call_command("createenrollmenttoken", "--uses", "0")
