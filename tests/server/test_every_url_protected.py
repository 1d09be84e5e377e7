"""Every URL of the project requires a role, or is on a short list with its own authentication."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, get_resolver

# Views that authenticate by other means, each covered by its own refusal tests.
OWN_AUTH = {
    "login": "the login page itself",
    "logout": "POST only; ends the caller's own session",
    "static-file": "public static assets",
    "api-agent-enroll": "one-time enrollment token in the body",
    "api-agent-rotate": "the node's own bearer secret",
    "api-root": "django-ninja's root of /api/: always 404",
}
OWN_AUTH_MODULES = (
    "fleet.hub.mirror",  # node secret or `hub` API key (tests/hub/test_mirror.py)
    "fleet.telemetry.exporter",  # `metrics` API key or allow-listed address (tests/telemetry/test_exporter.py)
    "fleet.playground.gateway",  # `chat` API key (tests/playground/test_gateway.py)
    "ninja.operation",  # /api/: every operation needs a session or a rollouts key (tests/rollouts/test_api.py)
    "django.contrib.admin",  # Django admin: staff only
    "django.contrib.auth",
    "django.views.generic.base",  # redirects (e.g. the admin's)
)


def _patterns(resolver: URLResolver, prefix: str = ""):
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            if getattr(entry, "app_name", None) == "admin":
                continue  # Django's admin site checks is_staff itself
            yield from _patterns(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def test_every_view_requires_a_role_or_has_its_own_authentication():
    unprotected = []
    for route, pattern in _patterns(get_resolver()):
        view = pattern.callback
        module = getattr(view, "__module__", "")
        if getattr(view, "required_role", None) or pattern.name in OWN_AUTH or module.startswith(OWN_AUTH_MODULES):
            continue
        unprotected.append(f"{route} ({pattern.name}, {module}.{getattr(view, '__name__', view)})")
    assert not unprotected, "views without a role check:\n" + "\n".join(unprotected)
