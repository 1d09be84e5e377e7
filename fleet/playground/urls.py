"""The playground pages (`/playground/`) and the conversation-history API the page uses."""

from django.urls import path

from fleet.playground import views

app_name = "playground"
urlpatterns: list = [
    path("", views.playground, name="page"),
    path("access/", views.access_update, name="access"),
    path("api/conversations/", views.conversation_list, name="conversations"),
    path("api/conversations/<int:pk>/", views.conversation_detail, name="conversation"),
    path("api/conversations/<int:pk>/messages/", views.message_create, name="messages"),
    path("api/conversations/<int:pk>/truncate/", views.conversation_truncate, name="truncate"),
]
