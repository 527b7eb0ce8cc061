from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from labs import (
    api,
    artifacts,
    cohort_views,
    fleet,
    instructor_cohort_views,
    instructor_gradebook_views,
    instructor_review_views,
    views,
)

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
    # Files the grader handed back for download (labs/artifacts.py), e.g. a profiler trace.
    path(
        "submissions/<uuid:pk>/files/<str:name>",
        artifacts.download,
        name="submission-artifact",
    ),
    path("my/submissions/", views.my_submissions, name="my-submissions"),
    # Cohorts, the learner's side
    path("cohorts/", cohort_views.my_cohorts, name="cohorts"),
    path("cohorts/join/", cohort_views.join, name="cohort-join"),
    path("cohorts/<int:pk>/leave/", cohort_views.leave, name="cohort-leave"),
    # Instructors (staff accounts). The login form refuses accounts without staff status.
    path(
        "instructor/login/",
        auth_views.LoginView.as_view(
            template_name="labs/instructor/login.html",
            authentication_form=AdminAuthenticationForm,
        ),
        name="instructor-login",
    ),
    path("instructor/logout/", auth_views.LogoutView.as_view(), name="instructor-logout"),
    path(
        "instructor/password/",
        auth_views.PasswordChangeView.as_view(
            template_name="labs/instructor/password.html",
            success_url=reverse_lazy("instructor-home"),
        ),
        name="instructor-password",
    ),
    path("instructor/", instructor_cohort_views.home, name="instructor-home"),
    path(
        "instructor/cohorts/<int:pk>/",
        instructor_cohort_views.cohort_detail,
        name="instructor-cohort",
    ),
    path(
        "instructor/cohorts/<int:pk>/members/<int:member>/remove/",
        instructor_cohort_views.member_remove,
        name="instructor-member-remove",
    ),
    path(
        "instructor/cohorts/<int:pk>/join-code/",
        instructor_cohort_views.new_join_code,
        name="instructor-join-code",
    ),
    path(
        "instructor/cohorts/<int:pk>/instructors/",
        instructor_cohort_views.instructor_add,
        name="instructor-add",
    ),
    path(
        "instructor/cohorts/<int:pk>/gradebook/",
        instructor_gradebook_views.gradebook,
        name="instructor-gradebook",
    ),
    path(
        "instructor/cohorts/<int:pk>/analytics/",
        instructor_gradebook_views.analytics,
        name="instructor-analytics",
    ),
    path(
        "instructor/cohorts/<int:pk>/gradebook.csv",
        instructor_gradebook_views.gradebook_csv,
        name="instructor-gradebook-csv",
    ),
    path(
        "instructor/cohorts/<int:pk>/labs/<slug:slug>/submissions.csv",
        instructor_gradebook_views.lab_csv,
        name="instructor-lab-csv",
    ),
    path(
        "instructor/cohorts/<int:pk>/submissions/<uuid:submission>/",
        instructor_review_views.review,
        name="instructor-review",
    ),
    path(
        "instructor/cohorts/<int:pk>/submissions/<uuid:submission>/override/",
        instructor_review_views.override,
        name="instructor-override",
    ),
    path(
        "instructor/cohorts/<int:pk>/submissions/<uuid:submission>/regrade/",
        instructor_review_views.regrade,
        name="instructor-regrade",
    ),
    path(
        "instructor/cohorts/<int:pk>/submissions/<uuid:submission>/feedback/",
        instructor_review_views.feedback,
        name="instructor-feedback",
    ),
    path(
        "instructor/cohorts/<int:pk>/submissions/<uuid:submission>/release/",
        instructor_review_views.release,
        name="instructor-release",
    ),
    path(
        "instructor/cohorts/<int:pk>/submissions/<uuid:submission>/rubric/<str:item>/",
        instructor_review_views.rubric_score,
        name="instructor-rubric-score",
    ),
    path(
        "instructor/cohorts/<int:pk>/labs/<slug:slug>/regrade/",
        instructor_cohort_views.regrade_lab,
        name="instructor-regrade-lab",
    ),
    path(
        "instructor/cohorts/<int:pk>/labs/<slug:slug>/release/",
        instructor_cohort_views.release_lab,
        name="instructor-release-lab",
    ),
    # The grading fleet, from the workers' heartbeats (staff only)
    path("fleet/", fleet.fleet_page, name="fleet"),
    path("fleet/prices/", fleet.fleet_price, name="fleet-price"),
    # JSON API v1
    path("api/v1/labs/<slug:slug>/submissions", api.create_submission, name="api-submit"),
    path("api/v1/submissions/<uuid:pk>", api.submission_detail, name="api-submission"),
    path("api/v1/submissions", api.learner_submissions, name="api-learner-submissions"),
    path("api/v1/verifications/check", api.check_verifications, name="api-verify"),
]
