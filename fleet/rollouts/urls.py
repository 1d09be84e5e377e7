"""Deployment and rollout pages (included at the site root by fleet.urls)."""

from django.urls import path

from fleet.rollouts import views

urlpatterns = [
    path("deployments/", views.deployment_list, name="deployment-list"),
    path("deployments/new/", views.deployment_new, name="deployment-new"),
    path("deployments/<slug:name>/", views.deployment_detail, name="deployment-detail"),
    path("deployments/<slug:name>/rollouts/new/", views.rollout_new, name="rollout-new"),
    path("rollouts/<int:pk>/", views.rollout_detail, name="rollout-detail"),
    path("rollouts/<int:pk>/<slug:action>/", views.rollout_action, name="rollout-action"),
]
