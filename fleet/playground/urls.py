"""The playground pages (`/playground/`)."""

from django.urls import path  # noqa: F401

app_name = "playground"
urlpatterns: list = []
