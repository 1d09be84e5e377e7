"""Websocket routes: browser sockets behind origin + session auth, the agent socket behind its secret."""

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from fleet.agents.auth import NodeSecretMiddleware
from fleet.agents.consumers import AgentConsumer
from fleet.playground.consumers import ChatConsumer
from fleet.web.consumers import LiveConsumer


def browser(app):
    return AllowedHostsOriginValidator(AuthMiddlewareStack(app))


websocket_urlpatterns = [
    path("ws/agent/", NodeSecretMiddleware(AgentConsumer.as_asgi())),
    path("ws/live/", browser(LiveConsumer.as_asgi())),
    path("ws/chat/", browser(ChatConsumer.as_asgi())),
]
