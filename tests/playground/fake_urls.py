"""TEST-ONLY: Fleet's URLs with a stand-in `playground:targets` (until the chat server side is merged)."""

from django.urls import include, path

from fleet import urls as fleet_urls
from fleet.playground import urls as playground_urls
from tests.playground.fake_chat import stand_in_targets

stand_in_targets.required_role = "viewer"  # may_chat is checked inside
_playground = [*playground_urls.urlpatterns, path("targets/", stand_in_targets, name="targets")]
urlpatterns = [
    path("playground/", include((_playground, "playground"))),
    *(p for p in fleet_urls.urlpatterns if getattr(p, "namespace", None) != "playground"),
]
