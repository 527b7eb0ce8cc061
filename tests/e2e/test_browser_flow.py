"""A learner's whole path in a real browser against real processes: open the lab from the
roadmap, upload a notebook, watch it run, read the verdict, see the milestone verified."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "notebooks" / "softmax"
pytestmark = [pytest.mark.timeout(600), pytest.mark.browser]


@pytest.mark.parametrize(
    "stack",
    ["embedded", pytest.param("redis", id="postgres+redis", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_a_learner_submits_from_the_page_and_the_milestone_becomes_verified(stack, new_page):
    page = new_page()
    page.goto(f"{stack.url}/phases/advanced-optimization/")
    page.get_by_role("link", name="A numerically stable softmax").click()
    assert page.get_by_role("heading", name="What is measured").is_visible()

    # A wrong notebook first: a verdict with the failing criterion and its hint.
    page.locator("input[type=file]").set_input_files(str(LAB / "fixtures/naive_overflow.ipynb"))
    page.get_by_role("button", name="Submit for grading").click()
    # Upload, validation and dispatch: seconds on a loaded 2-core CI machine.
    page.wait_for_url("**/submissions/*/", timeout=30_000)
    page.wait_for_selector("[data-status-word]:text('Failed')", timeout=120_000)
    assert page.locator("tr.failed").count() >= 1
    assert "Hint:" in page.locator("table.criteria").inner_text()

    # Then the reference: passed, and the roadmap shows the milestone verified.
    page.goto(f"{stack.url}/labs/softmax/")
    page.locator("input[type=file]").set_input_files(str(LAB / "reference.ipynb"))
    page.get_by_role("button", name="Submit for grading").click()
    # Upload, validation and dispatch: seconds on a loaded 2-core CI machine.
    page.wait_for_url("**/submissions/*/", timeout=30_000)
    status = page.locator("[data-status-word]")
    assert status.inner_text() in ("Queued", "Running", "Passed")
    page.wait_for_selector("[data-status-word]:text('Passed')", timeout=120_000)
    assert page.locator("tr.passed").count() == 3
    assert page.get_by_text("now marked verified").is_visible()

    page.goto(f"{stack.url}/phases/advanced-optimization/")
    milestone = page.locator('.milestone [data-item="advanced-optimization.milestone"]')
    assert milestone.get_attribute("data-verified") is not None

    page.goto(f"{stack.url}/my/submissions/")
    page.wait_for_selector("#submission-list td.status-passed")
    assert page.locator("#submission-list tbody tr").count() == 2
