"""ASGI entry point: HTTP goes to Django, websockets to the routes in fleet.routing."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")
django_asgi_app = get_asgi_application()  # set up Django before importing consumers and models

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from fleet.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": URLRouter(websocket_urlpatterns)})
