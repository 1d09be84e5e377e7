"""The OpenAI-compatible fleet gateway (`/v1/`): authenticated by API key (chat scope), not by session."""

from django.urls import path

from fleet.playground import gateway

urlpatterns = [
    path("models", gateway.models_view, name="gateway-models"),
    path("chat/completions", gateway.chat_completions, name="gateway-chat-completions"),
]
