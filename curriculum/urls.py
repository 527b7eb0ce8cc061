from django.urls import path

from curriculum import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("phases/<slug:slug>/", views.phase_detail, name="phase"),
    path("projects/", views.project_list, name="projects"),
    path("projects/<slug:slug>/", views.project_detail, name="project"),
]
