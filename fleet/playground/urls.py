"""The playground pages (`/playground/`): the page, its conversation history API, and chat targets."""

from django.urls import path

from fleet.playground import views
from fleet.playground.targets_view import targets_view

app_name = "playground"
urlpatterns: list = [
    path("", views.playground, name="page"),
    path("access/", views.access_update, name="access"),
    path("targets/", targets_view, name="targets"),
    path("api/conversations/", views.conversation_list, name="conversations"),
    path("api/conversations/<int:pk>/", views.conversation_detail, name="conversation"),
    path("api/conversations/<int:pk>/messages/", views.message_create, name="messages"),
    path("api/conversations/<int:pk>/truncate/", views.conversation_truncate, name="truncate"),
]
