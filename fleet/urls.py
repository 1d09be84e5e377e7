from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from fleet.rollouts.api import api as rollouts_api
from fleet.telemetry.exporter import metrics as metrics_view

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/agents/", include("fleet.agents.urls")),
    path("api/", rollouts_api.urls),
    path("hf/", include("fleet.hub.urls_mirror")),
    path("models/", include("fleet.hub.urls")),
    path("playground/", include("fleet.playground.urls")),
    path("v1/", include("fleet.playground.urls_gateway")),
    path("", include("fleet.rollouts.urls")),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("", include("fleet.web.urls")),
]
