"""Cohorts: learners join with a code and a display name (no account: the browser's learner
key identifies them), see their cohorts and leave; instructors create cohorts, see members,
remove one, change the code and add colleagues. Bad input changes nothing and says why."""

from __future__ import annotations

import pytest
from django.test import Client

from labs.models import JOIN_CODE_ALPHABET, Cohort, Membership
from tests.labs.conftest import CAROL, LEARNER, OTHER_LEARNER

pytestmark = pytest.mark.django_db


def join(client, code, name="Ada", learner=LEARNER):
    return client.post("/cohorts/join/", {"code": code, "display_name": name, "learner": learner})


def listing(client, key=LEARNER) -> str:
    headers = {"HX-Request": "true", "X-Learner-Key": key}
    return client.get("/cohorts/", headers=headers).content.decode()


def test_join_codes_are_8_unambiguous_characters_and_unique():
    codes = {Cohort.objects.create(name=f"c{i}").join_code for i in range(50)}
    assert len(codes) == 50
    for code in codes:
        assert len(code) == 8 and set(code) <= set(JOIN_CODE_ALPHABET)
    assert not set("0O1I") & set(JOIN_CODE_ALPHABET)


def test_a_learner_joins_with_a_code_and_a_display_name(client, cohort):
    response = join(client, cohort.join_code, name="Linus", learner=CAROL)
    assert response.status_code == 302 and response["Location"] == "/cohorts/"
    membership = Membership.objects.get(learner_key=CAROL)
    assert membership.cohort == cohort and membership.display_name == "Linus"
    assert "You are in Spring 2027 as “Linus”." in client.get("/cohorts/").content.decode()


def test_the_code_may_be_typed_in_lower_case_with_spaces_or_dashes(client, cohort):
    typed = f" {cohort.join_code[:4].lower()}-{cohort.join_code[4:].lower()} "
    assert join(client, typed, learner=CAROL).status_code == 302
    assert Membership.objects.filter(learner_key=CAROL, cohort=cohort).exists()


def test_an_unknown_code_is_refused_and_keeps_what_was_typed(client, cohort):
    response = join(client, "ZZZZ9999", name="Linus", learner=CAROL)
    body = response.content.decode()
    assert response.status_code == 400
    assert "No cohort has the join code “ZZZZ9999”" in body and "never 0, O, 1 or I" in body
    assert 'value="ZZZZ9999"' in body and 'value="Linus"' in body
    assert not Membership.objects.filter(learner_key=CAROL).exists()


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "Enter a display name."),
        ("    ", "Enter a display name."),
        ("x" * 61, "Keep the display name to 60 characters or fewer."),
        ("bell\x07", "Use letters, digits, spaces and punctuation only."),
    ],
)
def test_an_empty_too_long_or_unprintable_name_is_refused(client, cohort, name, message):
    response = join(client, cohort.join_code, name=name, learner=CAROL)
    assert response.status_code == 400 and message in response.content.decode()
    assert f'value="{cohort.join_code}"' in response.content.decode()  # the code is kept
    assert not Membership.objects.filter(learner_key=CAROL).exists()


@pytest.mark.parametrize("key", ["", "not-a-key", "g" * 32])
def test_a_missing_or_malformed_learner_key_is_refused(client, cohort, key):
    response = join(client, cohort.join_code, name="Linus", learner=key)
    assert response.status_code == 400
    assert "Your browser did not send its learner key" in response.content.decode()
    assert 'value="Linus"' in response.content.decode()
    assert Membership.objects.count() == 2


def test_joining_again_renames_without_a_second_membership(client, cohort):
    join(client, cohort.join_code, name="Ada L.", learner=LEARNER)
    membership = Membership.objects.get(learner_key=LEARNER)
    assert membership.display_name == "Ada L." and cohort.memberships.count() == 2


def test_the_join_link_prefills_the_code_and_says_what_is_shared(client, cohort):
    body = client.get(f"/cohorts/join/?code={cohort.join_code}").content.decode()
    assert f'value="{cohort.join_code}"' in body
    assert 'name="learner" value="" data-learner-key' in body  # filled by labs.js
    assert "every lab submission made from this browser, including earlier ones" in body
    assert 'name="csrfmiddlewaretoken"' in body


def test_joining_needs_the_csrf_token(cohort):
    strict = Client(enforce_csrf_checks=True)
    assert join(strict, cohort.join_code, learner=CAROL).status_code == 403
    assert not Membership.objects.filter(learner_key=CAROL).exists()


def test_my_cohorts_lists_this_browsers_memberships_only(client, cohort, bob):
    Cohort.objects.get(name="Bob's cohort").join(learner_key=CAROL, display_name="Linus")
    page = client.get("/cohorts/").content.decode()
    assert 'hx-trigger="load"' in page and "X-Learner-Key" in page
    mine = listing(client, LEARNER)
    assert "Spring 2027" in mine and "Ada" in mine and "Bob's cohort" not in mine
    assert LEARNER not in mine and LEARNER[:8] in mine  # only the key's prefix is shown
    assert "in no cohort yet" in listing(client, "")


def test_a_learner_leaves_and_their_instructors_no_longer_see_them(client, cohort):
    membership = cohort.memberships.get(learner_key=LEARNER)
    headers = {"HX-Request": "true", "X-Learner-Key": LEARNER}
    response = client.post(f"/cohorts/{membership.pk}/leave/", headers=headers)
    assert response.status_code == 200
    assert "You left Spring 2027." in response.content.decode()
    membership.refresh_from_db()
    assert membership.left is not None and membership.removed_by is None
    assert list(cohort.members().values_list("learner_key", flat=True)) == [OTHER_LEARNER]
    assert "Spring 2027" not in listing(client, LEARNER).replace("You left Spring 2027", "")


def test_a_learner_cannot_leave_for_someone_else(client, cohort):
    theirs = cohort.memberships.get(learner_key=OTHER_LEARNER)
    headers = {"HX-Request": "true", "X-Learner-Key": LEARNER}
    assert client.post(f"/cohorts/{theirs.pk}/leave/", headers=headers).status_code == 404
    assert client.post(f"/cohorts/{theirs.pk}/leave/").status_code == 400  # no key at all
    theirs.refresh_from_db()
    assert theirs.left is None


def test_leaving_needs_the_csrf_token(cohort):
    membership = cohort.memberships.get(learner_key=LEARNER)
    strict = Client(enforce_csrf_checks=True)
    headers = {"HX-Request": "true", "X-Learner-Key": LEARNER}
    assert strict.post(f"/cohorts/{membership.pk}/leave/", headers=headers).status_code == 403
    membership.refresh_from_db()
    assert membership.left is None


def test_an_instructor_creates_a_cohort_and_teaches_it(client, alice):
    client.force_login(alice)
    response = client.post("/instructor/", {"name": "Autumn 2027"})
    cohort = Cohort.objects.get(name="Autumn 2027")
    assert response.status_code == 302
    assert response["Location"] == f"/instructor/cohorts/{cohort.pk}/"
    assert list(cohort.instructors.all()) == [alice]
    assert client.post("/instructor/", {"name": ""}).status_code == 400


def test_the_instructor_sees_the_members_and_removes_one(client, alice, cohort):
    client.force_login(alice)
    page = client.get(f"/instructor/cohorts/{cohort.pk}/").content.decode()
    assert "Ada" in page and "Grace" in page and cohort.join_code in page
    assert f"/cohorts/join/?code={cohort.join_code}" in page
    assert LEARNER not in page  # never the whole key
    grace = cohort.memberships.get(learner_key=OTHER_LEARNER)
    response = client.post(f"/instructor/cohorts/{cohort.pk}/members/{grace.pk}/remove/")
    assert response.status_code == 302
    grace.refresh_from_db()
    assert grace.left is not None and grace.removed_by == alice
    page = client.get(f"/instructor/cohorts/{cohort.pk}/").content.decode()
    assert "Removed Grace" in page and "Members (1)" in page


def test_a_removed_learner_can_rejoin_until_the_code_changes(client, alice, cohort):
    grace = cohort.memberships.get(learner_key=OTHER_LEARNER)
    grace.remove(by=alice)
    old_code = cohort.join_code
    assert join(client, old_code, name="Grace", learner=OTHER_LEARNER).status_code == 302
    grace.refresh_from_db()
    assert grace.left is None and grace.removed_by is None

    grace.remove(by=alice)
    client.force_login(alice)
    client.post(f"/instructor/cohorts/{cohort.pk}/join-code/")
    cohort.refresh_from_db()
    assert cohort.join_code != old_code
    assert join(client, old_code, name="Grace", learner=OTHER_LEARNER).status_code == 400
    assert cohort.members().count() == 1


def test_an_instructor_adds_a_staff_colleague_but_not_other_accounts(client, alice, cohort, bob):
    from django.contrib.auth.models import User

    User.objects.create_user("dave", password="x")  # no staff status
    client.force_login(alice)
    url = f"/instructor/cohorts/{cohort.pk}/instructors/"
    refused = client.post(url, {"username": "dave"})
    assert refused.status_code == 400
    assert "no active staff account “dave”" in refused.content.decode()
    assert client.post(url, {"username": "bob"}).status_code == 302
    assert set(cohort.instructors.values_list("username", flat=True)) == {"alice", "bob"}
