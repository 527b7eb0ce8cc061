"""Who may use the instructor pages: an anonymous visitor is sent to the login page, a signed-in
account without staff status is refused (403), a staff user who does not teach the cohort gets
404 for everything in it, and the cohort's instructor gets in. Every form needs CSRF."""

from __future__ import annotations

import pytest
from django.test import Client

from labs.models import AuditEntry, Cohort, Feedback, Regrade, RubricScore, Submission
from tests.labs.conftest import CAROL, PASSWORD, graded

pytestmark = pytest.mark.django_db

GET_PAGES = [
    "/instructor/cohorts/{cohort}/",
    "/instructor/cohorts/{cohort}/gradebook/",
    "/instructor/cohorts/{cohort}/gradebook.csv",
    "/instructor/cohorts/{cohort}/labs/pilot/submissions.csv",
    "/instructor/cohorts/{cohort}/submissions/{submission}/",
    "/instructor/cohorts/{cohort}/labs/pilot/regrade/",  # the confirmation page
]
POST_ACTIONS = [
    "/instructor/cohorts/{cohort}/members/{member}/remove/",
    "/instructor/cohorts/{cohort}/join-code/",
    "/instructor/cohorts/{cohort}/instructors/",
    "/instructor/cohorts/{cohort}/submissions/{submission}/override/",
    "/instructor/cohorts/{cohort}/submissions/{submission}/regrade/",
    "/instructor/cohorts/{cohort}/submissions/{submission}/feedback/",
    "/instructor/cohorts/{cohort}/submissions/{submission}/release/",
    "/instructor/cohorts/{cohort}/labs/pilot/regrade/",
    "/instructor/cohorts/{cohort}/labs/pilot/release/",
    "/instructor/cohorts/{cohort}/submissions/{submission}/rubric/fusions/",
]


@pytest.fixture
def urls(rubric_lab, cohort):
    submission = graded(rubric_lab, status="failed")
    member = cohort.memberships.get(learner_key=submission.learner_key)
    ids = {"cohort": cohort.pk, "submission": submission.pk, "member": member.pk}
    return {
        "get": [url.format(**ids) for url in GET_PAGES],
        "post": [url.format(**ids) for url in POST_ACTIONS],
    }


def assert_nothing_changed(cohort):
    code = cohort.join_code
    cohort.refresh_from_db()
    assert cohort.join_code == code and cohort.members().count() == 2
    assert cohort.instructors.count() == 1 and not AuditEntry.objects.exists()
    assert not Regrade.objects.exists() and not Feedback.objects.exists()
    assert not RubricScore.objects.exists()
    assert not Submission.objects.filter(status="queued").exists()


# Every form's fields at once, each valid: a refusal must come from who asks, not from what.
OVERRIDE = {
    "status": "passed", "reason": "r", "username": "bob", "comment": "c", "confirm": "yes",
    "fusions-points": "3", "fusions-comment": "c",
}  # fmt: skip


def test_anonymous_visitors_are_sent_to_the_login_page(client, urls, cohort):
    for url in ["/instructor/", *urls["get"], *urls["post"]]:
        method = client.post if url in urls["post"] else client.get
        response = method(url, OVERRIDE)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/instructor/login/?next=/instructor/"), url
    assert_nothing_changed(cohort)


def test_an_expired_session_polling_the_gradebook_reloads_to_the_login_page(client, cohort):
    response = client.get(
        f"/instructor/cohorts/{cohort.pk}/gradebook/", headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert response["HX-Redirect"].startswith("/instructor/login/?next=")


def test_an_account_without_staff_status_is_refused(client, charlie, urls, cohort):
    client.force_login(charlie)
    for url in ["/instructor/", *urls["get"], *urls["post"]]:
        method = client.post if url in urls["post"] else client.get
        assert method(url, OVERRIDE).status_code == 403, url
    assert_nothing_changed(cohort)


def test_an_instructor_of_another_cohort_finds_nothing(client, bob, urls, cohort):
    client.force_login(bob)
    for url in urls["get"] + urls["post"]:
        method = client.post if url in urls["post"] else client.get
        assert method(url, OVERRIDE | {"username": "bob"}).status_code == 404, url
    home = client.get("/instructor/").content.decode()
    assert "Bob&#x27;s cohort" in home and "Spring 2027" not in home
    assert_nothing_changed(cohort)


def test_the_cohorts_instructor_gets_in(client, alice, urls):
    client.force_login(alice)
    for url in ["/instructor/", *urls["get"]]:
        assert client.get(url).status_code == 200, url


def test_a_submission_is_reviewable_only_through_a_cohort_its_learner_is_in(
    client, alice, lab, cohort
):
    outsider = graded(lab, learner=CAROL)
    client.force_login(alice)
    review = f"/instructor/cohorts/{cohort.pk}/submissions/{{}}/"
    assert client.get(review.format(outsider.pk)).status_code == 404
    mine = graded(lab)
    assert client.get(review.format(mine.pk)).status_code == 200
    cohort.memberships.get(learner_key=mine.learner_key).leave()
    assert client.get(review.format(mine.pk)).status_code == 404


def test_the_login_page_signs_in_staff_only(client, alice, charlie):
    page = client.get("/instructor/login/")
    assert page.status_code == 200 and 'name="csrfmiddlewaretoken"' in page.content.decode()
    refused = client.post("/instructor/login/", {"username": "charlie", "password": PASSWORD})
    assert refused.status_code == 200 and "staff account" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    signed_in = client.post("/instructor/login/", {"username": "alice", "password": PASSWORD})
    assert signed_in.status_code == 302 and signed_in["Location"] == "/instructor/"


def test_signing_out_takes_a_post(client, alice):
    client.force_login(alice)
    assert client.get("/instructor/logout/").status_code == 405
    assert client.post("/instructor/logout/").status_code == 302
    assert "_auth_user_id" not in client.session


def test_every_instructor_form_needs_the_csrf_token(alice, urls, cohort):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    for url in ["/instructor/", *urls["post"]]:
        assert strict.post(url, OVERRIDE | {"name": "x"}).status_code == 403, url
    assert_nothing_changed(cohort)
    assert Cohort.objects.count() == 1


def test_htmx_requests_carry_the_csrf_token_from_the_page(client, alice, cohort):
    client.force_login(alice)
    page = client.get(f"/instructor/cohorts/{cohort.pk}/gradebook/").content.decode()
    assert '<body hx-headers=\'{"X-CSRFToken": "' in page
    assert '{"X-CSRFToken": ""}' not in page


def test_the_cohorts_instructor_scores_the_rubric(client, alice, urls):
    client.force_login(alice)
    rubric = next(url for url in urls["post"] if "/rubric/" in url)
    assert client.post(rubric, OVERRIDE).status_code == 302
    assert RubricScore.objects.get().points == 3
