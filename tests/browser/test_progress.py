"""Progress kept in the browser: marking, bars, reload, export/import, reset, aliases."""

from __future__ import annotations

import json

import pytest

from curriculum.models import SlugAlias
from tests.conftest import save_screenshot

STORAGE_KEY = "inference-roadmap/progress"


def status(page, slug: str):
    return page.locator(f'select[data-status-for="{slug}"]')


def bar_text(page, group: str) -> str:
    return page.locator(f'[data-progress-group="{group}"] [data-progress-text]').first.inner_text()


def stored(page) -> dict:
    return json.loads(page.evaluate(f"localStorage.getItem('{STORAGE_KEY}')") or "null")


def mark_some_foundations(page, site):
    page.goto(f"{site}/phases/foundations/")
    status(page, "foundations.transformer-internals").select_option("done")
    status(page, "foundations.gpu-architecture").select_option("done")
    status(page, "foundations.profiling-benchmarking").select_option("in-progress")


def test_marked_items_update_the_bars_and_survive_a_reload(page, site):
    mark_some_foundations(page, site)
    assert bar_text(page, "foundations") == "2 of 4 done (50%) · 1 in progress"
    page.reload()
    assert status(page, "foundations.gpu-architecture").input_value() == "done"
    assert bar_text(page, "foundations") == "2 of 4 done (50%) · 1 in progress"

    page.goto(site)
    assert bar_text(page, "foundations") == "2 of 4 done (50%) · 1 in progress"
    assert bar_text(page, "overall") == "2 of 20 done (10%) · 1 in progress"
    assert bar_text(page, "serving-quantization") == "0 of 4 done (0%)"
    value = page.locator('[data-progress-group="overall"] progress').evaluate("p => p.value")
    assert value == 2


def test_skipped_items_leave_the_count(page, site):
    mark_some_foundations(page, site)
    status(page, "foundations.milestone").select_option("skipped")
    assert bar_text(page, "foundations") == "2 of 3 done (67%) · 1 in progress · 1 skipped"


def test_projects_have_their_own_bar_and_the_filter_keeps_statuses(page, site):
    page.goto(f"{site}/projects/")
    status(page, "gqa-cuda-kernel").select_option("done")
    assert bar_text(page, "projects") == "1 of 8 done (13%)"
    page.get_by_label("Advanced").check()
    page.wait_for_url("**/projects/?difficulty=advanced")
    page.wait_for_function("document.querySelectorAll('.card.project').length === 4")
    assert status(page, "gqa-cuda-kernel").input_value() == "done"
    assert page.locator("html").count() == 1  # swapped a fragment, not a nested page
    page.get_by_label("Beginner").check()
    page.wait_for_function("document.querySelectorAll('.card.project').length === 1")


def test_export_then_import_on_a_fresh_profile_restores_progress(page, new_page, site, tmp_path):
    mark_some_foundations(page, site)
    page.goto(site)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export progress").click()
    exported = tmp_path / "progress.json"
    download_info.value.save_as(exported)
    data = json.loads(exported.read_text())
    assert data["format"] == "inference-roadmap-progress" and data["version"] == 1
    assert data["items"] == {
        "foundations.transformer-internals": "done",
        "foundations.gpu-architecture": "done",
        "foundations.profiling-benchmarking": "in-progress",
    }

    fresh = new_page()
    fresh.goto(site)
    assert bar_text(fresh, "overall") == "0 of 20 done (0%)"
    fresh.locator("[data-progress-import]").set_input_files(str(exported))
    fresh.wait_for_selector("text=Imported progress: 3 items.")
    assert bar_text(fresh, "overall") == "2 of 20 done (10%) · 1 in progress"
    assert stored(fresh)["learner_key"] == data["learner_key"]
    fresh.reload()
    assert bar_text(fresh, "foundations") == "2 of 4 done (50%) · 1 in progress"


@pytest.mark.parametrize(
    "content, message",
    [
        ("this is not json {", "That file is not JSON"),
        ('{"hello": "world"}', "This file is not an Inference Roadmap progress export."),
        (
            '{"format": "inference-roadmap-progress", "version": 1, "items": {"x": "finished"}}',
            'Item “x” has an unknown status "finished".',
        ),
        (
            '{"format": "inference-roadmap-progress", "version": 7, "items": {}}',
            "version 7, which this site cannot read",
        ),
        ("[1, 2, 3]", "This file is not an Inference Roadmap progress export."),
    ],
)
def test_a_bad_import_file_says_why_and_changes_nothing(page, site, tmp_path, content, message):
    mark_some_foundations(page, site)
    page.goto(site)
    before = stored(page)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    page.locator("[data-progress-import]").set_input_files(str(bad))
    notice = page.locator("[data-progress-message]")
    notice.wait_for(state="visible")
    assert message in notice.inner_text() and "Nothing was changed." in notice.inner_text()
    assert stored(page) == before
    assert bar_text(page, "overall") == "2 of 20 done (10%) · 1 in progress"


def test_reset_asks_first_and_keeps_the_learner_key(page, site):
    mark_some_foundations(page, site)
    page.goto(site)
    key = stored(page)["learner_key"]
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Reset progress").click()
    assert bar_text(page, "overall") == "2 of 20 done (10%) · 1 in progress"
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Reset progress").click()
    assert bar_text(page, "overall") == "0 of 20 done (0%)"
    assert stored(page)["items"] == {} and stored(page)["learner_key"] == key


def test_progress_saved_under_a_renamed_slug_moves_to_the_new_one(page, site):
    SlugAlias.objects.create(
        old_slug="foundations.gpu-basics", new_slug="foundations.gpu-architecture"
    )
    page.goto(site)
    old = {
        "format": "inference-roadmap-progress",
        "version": 1,
        "learner_key": "0" * 32,
        "items": {"foundations.gpu-basics": "done"},
        "verified": {},
    }
    page.evaluate(f"localStorage.setItem('{STORAGE_KEY}', {json.dumps(json.dumps(old))})")
    page.goto(f"{site}/phases/foundations/")
    assert status(page, "foundations.gpu-architecture").input_value() == "done"
    assert stored(page)["items"] == {"foundations.gpu-architecture": "done"}


def test_unreadable_saved_progress_is_kept_aside_not_dropped(page, site):
    page.goto(site)
    page.evaluate(f"localStorage.setItem('{STORAGE_KEY}', 'garbage')")
    page.reload()
    assert "could not be read" in page.locator("[data-progress-message]").inner_text()
    kept = page.evaluate(
        "Object.keys(localStorage).filter(k => k.includes('.unreadable.'))"
        ".map(k => localStorage.getItem(k))"
    )
    assert kept == ["garbage"]


def test_the_roadmap_reads_without_javascript(new_page, site):
    page = new_page(java_script_enabled=False)
    page.goto(site)
    assert page.get_by_role("heading", name="The phases").is_visible()
    assert page.locator(".timeline-item").count() == 5
    assert not page.locator("[data-progress-export]").is_visible()
    page.get_by_role("link", name="Advanced Optimization & CUDA").click()
    assert page.get_by_role("heading", name="Goals").is_visible()
    assert not page.locator("select[data-status-for]").first.is_visible()


def test_the_first_tab_stop_is_the_skip_link(page, site):
    page.goto(site)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"


def test_the_pages_fit_a_phone_screen(new_page, site):
    page = new_page(viewport={"width": 375, "height": 800})
    for path in ("/", "/phases/advanced-optimization/", "/projects/"):
        page.goto(site + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, path


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshot_of_the_roadmap_for_the_readme(new_page, site, scheme):
    """Not an assertion of looks: with UPDATE_SCREENSHOTS=1 (`make screenshots`) it refreshes
    the README's screenshots in docs/screenshots/."""
    page = new_page(viewport={"width": 1200, "height": 1000}, color_scheme=scheme)
    mark_some_foundations(page, site)
    status(page, "foundations.milestone").select_option("done")
    page.goto(site)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == ("rgb(247, 247, 245)" if scheme == "light" else "rgb(15, 17, 21)")
    save_screenshot(page, f"roadmap-{scheme}.png")
