"""CSV exports: the gradebook (one row per learner, stable per-lab columns) and one lab's
submissions (one row per submission); proper quoting; learner-controlled text can never run as
a spreadsheet formula; the learner key appears only as its 8-digit prefix."""

from __future__ import annotations

import csv
import io

import pytest

from labs import export
from labs.export import safe_text
from labs.services import override_grade
from tests.labs.conftest import CAROL, LEARNER, OTHER_LEARNER, graded

pytestmark = pytest.mark.django_db


def download(client, url) -> tuple[list[str], list[dict]]:
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="spring-2027-')
    text = response.content.decode()
    reader = csv.DictReader(io.StringIO(text))
    return reader.fieldnames, list(reader)


@pytest.fixture
def signed_in(client, alice):
    client.force_login(alice)
    return client


def test_the_gradebook_csv_has_one_row_per_learner_and_stable_columns(
    signed_in, alice, lab, cohort
):
    graded(lab, status="failed", speedup=1.05, minutes_ago=3)
    overridden = graded(lab, status="failed", speedup=1.1, minutes_ago=2)
    override_grade(submission=overridden, status="passed", reason="ok", by=alice, cohort=cohort)
    graded(lab, CAROL)  # not a member: not exported
    header, rows = download(signed_in, f"/instructor/cohorts/{cohort.pk}/gradebook.csv")
    assert header == [
        "learner", "display_name", "joined", "labs_passed",
        "pilot_status", "pilot_best_speedup", "pilot_attempts", "pilot_override",
    ]  # fmt: skip
    assert [row["display_name"] for row in rows] == ["Ada", "Grace"]
    ada, grace = rows
    assert ada["learner"] == LEARNER[:8] and ada["labs_passed"] == "1"
    assert (ada["pilot_status"], ada["pilot_best_speedup"], ada["pilot_attempts"]) == (
        "passed", "1.1", "2",
    )  # fmt: skip
    assert ada["pilot_override"] == "failed"  # what the grader said, replaced by the override
    assert grace["pilot_status"] == "" and grace["pilot_attempts"] == "0"
    assert grace["pilot_override"] == "" and grace["pilot_best_speedup"] == ""


def test_the_gradebook_csv_ignores_the_pages_filters(signed_in, lab, cohort):
    _, rows = download(signed_in, f"/instructor/cohorts/{cohort.pk}/gradebook.csv?status=passed")
    assert len(rows) == 2


@pytest.mark.parametrize(
    "name", ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "  =1+1", "＝1+1"]
)
def test_display_names_that_look_like_formulas_are_written_as_text(signed_in, cohort, name):
    cohort.join(learner_key=CAROL, display_name=name)
    _, rows = download(signed_in, f"/instructor/cohorts/{cohort.pk}/gradebook.csv")
    exported = next(row["display_name"] for row in rows if row["learner"] == CAROL[:8])
    assert exported == "'" + name


def test_plain_text_and_numbers_are_left_alone():
    assert safe_text("Ada Lovelace") == "Ada Lovelace"
    assert safe_text("O'Brien, Jr.") == "O'Brien, Jr."
    assert safe_text("\t=cmd") == "'\t=cmd"


def test_commas_quotes_and_newlines_survive_a_round_trip(signed_in, alice, lab, cohort):
    cohort.join(learner_key=CAROL, display_name='Smith, "Doc"')
    graded(lab, CAROL, status="error", message='Your code raised: ValueError("a,b")\nline 2')
    _, rows = download(signed_in, f"/instructor/cohorts/{cohort.pk}/gradebook.csv")
    assert 'Smith, "Doc"' in [row["display_name"] for row in rows]
    _, detail = download(signed_in, f"/instructor/cohorts/{cohort.pk}/labs/pilot/submissions.csv")
    assert detail[0]["message"] == 'Your code raised: ValueError("a,b")\nline 2'


def test_the_lab_csv_has_one_row_per_submission(signed_in, alice, lab, cohort):
    first = graded(lab, status="failed", mismatched=12, minutes_ago=5)
    second = graded(lab, status="passed", speedup=1.5, mismatched=0, minutes_ago=1,
                    metrics={"flags": ["speedup over 10x", "throttled"]})  # fmt: skip
    graded(lab, OTHER_LEARNER, status="error", message="=cmd|' /C calc'!A0")
    graded(lab, CAROL)  # not a member
    override_grade(submission=first, status="passed", reason="ok", by=alice, cohort=cohort)
    url = f"/instructor/cohorts/{cohort.pk}/labs/pilot/submissions.csv"
    header, rows = download(signed_in, url)
    assert header[:4] == ["submission_id", "learner", "display_name", "lab"]
    assert [r["submission_id"] for r in rows][:2] == [str(first.pk), str(second.pk)]
    assert len(rows) == 3
    row = rows[0]
    assert (row["graded_status"], row["override_status"], row["final_status"]) == (
        "failed", "passed", "passed",
    )  # fmt: skip
    assert row["mismatched_elements"] == "12" and row["speedup"] == ""
    assert rows[1]["speedup"] == "1.5" and rows[1]["speedup_ci95_low"] == "1.35"
    assert rows[1]["flags"] == "speedup over 10x; throttled"
    assert rows[1]["review_url"] == (
        f"http://testserver/instructor/cohorts/{cohort.pk}/submissions/{second.pk}/"
    )
    assert rows[2]["message"] == "'=cmd|' /C calc'!A0"  # grader messages may quote the learner


def test_no_export_contains_a_whole_learner_key(signed_in, lab, cohort):
    graded(lab, LEARNER)
    for url in ("gradebook.csv", "labs/pilot/submissions.csv"):
        body = signed_in.get(f"/instructor/cohorts/{cohort.pk}/{url}").content.decode()
        assert LEARNER not in body and OTHER_LEARNER not in body
        assert LEARNER[:8] in body


def test_a_lab_with_a_rubric_adds_rubric_columns_after_its_own(
    signed_in, alice, rubric_lab, cohort
):
    from labs.rubric import score_rubric_item

    submission = graded(rubric_lab, status="passed", speedup=1.2)
    for item, points, comment in (("fusions", 3, "=SUM(A1) is not a kernel"), ("why", 2, "")):
        score_rubric_item(submission=submission, item=item, points=points, comment=comment,
                          by=alice, cohort=cohort)  # fmt: skip
    header, rows = download(signed_in, f"/instructor/cohorts/{cohort.pk}/gradebook.csv")
    assert header == [
        "learner", "display_name", "joined", "labs_passed",
        "pilot_status", "pilot_best_speedup", "pilot_attempts", "pilot_override",
        "pilot_rubric_points", "pilot_rubric_max",
    ]  # fmt: skip
    ada, grace = rows
    assert (ada["pilot_rubric_points"], ada["pilot_rubric_max"]) == ("5", "10")
    assert (grace["pilot_rubric_points"], grace["pilot_rubric_max"]) == ("", "10")

    url = f"/instructor/cohorts/{cohort.pk}/labs/pilot/submissions.csv"
    header, rows = download(signed_in, url)
    assert header[: header.index("review_url") + 1] == export.DETAIL_COLUMNS  # unchanged
    assert header[header.index("review_url") + 1 :] == [
        "rubric_points", "rubric_max",
        "rubric_fusions_points", "rubric_fusions_comment",
        "rubric_evidence_points", "rubric_evidence_comment",
        "rubric_why_points", "rubric_why_comment",
    ]  # fmt: skip
    [row] = rows
    assert (row["rubric_points"], row["rubric_max"]) == ("5", "10")
    assert (row["rubric_fusions_points"], row["rubric_evidence_points"]) == ("3", "")
    assert row["rubric_fusions_comment"] == "'=SUM(A1) is not a kernel"  # never a formula
    assert (row["rubric_why_points"], row["rubric_why_comment"]) == ("2", "")


def test_a_lab_without_a_rubric_has_no_rubric_columns(signed_in, lab, cohort):
    graded(lab)
    header, _ = download(signed_in, f"/instructor/cohorts/{cohort.pk}/labs/pilot/submissions.csv")
    assert header == export.DETAIL_COLUMNS
