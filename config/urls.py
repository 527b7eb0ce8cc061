from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("curriculum.urls")),
    path("", include("labs.urls")),
    path("admin/", admin.site.urls),
]
