from django.urls import path

from fleet.agents import views

urlpatterns = [
    path("enroll", views.enroll_view, name="api-agent-enroll"),
    path("rotate", views.rotate_view, name="api-agent-rotate"),
]
