"""ASGI entry point: HTTP goes to Django, websockets to the routes in fleet.routing.

The first request or socket on an event loop also starts the embedded engine when FLEET_EMBEDDED_ENGINE
is set (fleet/engine.py), or else this process's own loops (offline sweep, coalesced fleet summary;
fleet.agents.presence): Daphne has no lifespan events, so this is the one place they can start.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")
django_asgi_app = get_asgi_application()  # set up Django before importing consumers and models

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from fleet import engine  # noqa: E402
from fleet.agents import presence  # noqa: E402
from fleet.routing import websocket_urlpatterns  # noqa: E402

router = ProtocolTypeRouter({"http": django_asgi_app, "websocket": URLRouter(websocket_urlpatterns)})


async def application(scope, receive, send):
    engine.ensure_embedded()
    presence.ensure_sweeper()  # a no-op where the embedded engine runs
    return await router(scope, receive, send)
