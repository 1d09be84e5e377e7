"""API keys: shown once, hashed at rest, checked by scope, owner and revocation."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from fleet.accounts.apikeys import ApiKeyError, authenticate_api_key, create_api_key, revoke_api_key
from fleet.accounts.models import ApiKey, AuditEvent
from fleet.lib.secrets import hash_secret

pytestmark = pytest.mark.django_db


def test_key_is_hashed_and_scoped(alice, charlie):
    key, plaintext = create_api_key(alice, charlie, ["metrics"])
    assert key.key_hash == hash_secret(plaintext) and plaintext not in key.key_hash
    assert authenticate_api_key(plaintext, "metrics").pk == key.pk
    assert authenticate_api_key(plaintext, "hub") is None
    assert authenticate_api_key(plaintext + "x", "metrics") is None
    assert AuditEvent.objects.filter(action="api_key.create").exists()


def test_revoked_key_and_roleless_owner_are_refused(alice, charlie, outsider):
    key, plaintext = create_api_key(alice, charlie, ["metrics"])
    assert revoke_api_key(alice, key)
    assert authenticate_api_key(plaintext, "metrics") is None
    _, other = create_api_key(alice, outsider, ["metrics"])
    assert authenticate_api_key(other, "metrics") is None


def test_unknown_scope_is_refused(alice, charlie):
    with pytest.raises(ApiKeyError, match="unknown: admin"):
        create_api_key(alice, charlie, ["admin"])


def test_command_prints_only_the_key(charlie, capsys):
    call_command("createapikey", "--user", "charlie", "--scope", "metrics", "--scope", "hub")
    plaintext = capsys.readouterr().out.strip()
    key = ApiKey.objects.get()
    assert (key.key_hash, key.scopes) == (hash_secret(plaintext), ["hub", "metrics"])


def test_command_names_a_missing_user():
    with pytest.raises(CommandError, match="--user: no user named 'nobody'"):
        call_command("createapikey", "--user", "nobody", "--scope", "metrics")
