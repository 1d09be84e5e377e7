"""The playground pages (`/playground/`)."""

from django.urls import path

from fleet.playground.targets_view import targets_view

app_name = "playground"
urlpatterns: list = [
    path("targets/", targets_view, name="targets"),
]
