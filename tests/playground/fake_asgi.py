"""TEST-ONLY ASGI app: `fleet.asgi` plus the stand-in `/ws/chat/` consumer (see fake_chat.py)."""

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from fleet.asgi import django_asgi_app  # sets Django up first
from fleet.routing import browser, websocket_urlpatterns  # noqa: E402
from tests.playground.fake_chat import stand_in_consumer  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": URLRouter([path("ws/chat/", browser(stand_in_consumer().as_asgi())), *websocket_urlpatterns]),
})
