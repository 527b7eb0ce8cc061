from django.urls import path

from labs import api, views

urlpatterns = [
    path("labs/", views.lab_list, name="labs"),
    path("labs/<slug:slug>/", views.lab_detail, name="lab"),
    path("labs/<slug:slug>/starter.ipynb", views.starter_download, name="lab-starter"),
    path("labs/<slug:slug>/submit/", views.submit, name="lab-submit"),
    path("submissions/<uuid:pk>/", views.submission_detail, name="submission"),
    path(
        "submissions/<uuid:pk>/notebook.html",
        views.submission_notebook,
        name="submission-notebook",
    ),
    path("my/submissions/", views.my_submissions, name="my-submissions"),
    # JSON API v1
    path("api/v1/labs/<slug:slug>/submissions", api.create_submission, name="api-submit"),
    path("api/v1/submissions/<uuid:pk>", api.submission_detail, name="api-submission"),
    path("api/v1/submissions", api.learner_submissions, name="api-learner-submissions"),
    path("api/v1/verifications/check", api.check_verifications, name="api-verify"),
]
