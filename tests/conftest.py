"""Shared fixtures. The browser is headless Chromium (Debian's package) driven by
Playwright: never `playwright install`; `.ci/run` installs /usr/bin/chromium from apt. Every
test gets a fresh browser context, i.e. a fresh profile with empty storage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings

from curriculum.loader import load_curriculum

REPO = Path(__file__).resolve().parent.parent

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
# between browser steps are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def curriculum(db):
    """The real roadmap, loaded from the data file."""
    return load_curriculum(settings.CURRICULUM_FILE)


CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run should have installed chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser):
    """Make pages in fresh profiles; fails the test on any JavaScript error."""
    contexts, errors = [], []

    def make(**options):
        context = browser.new_context(accept_downloads=True, **options)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(10_000)
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors: {errors}"


@pytest.fixture
def page(new_page):
    return new_page()


SCREENSHOTS = REPO / "docs" / "screenshots"


def save_screenshot(page, name: str, **options) -> None:
    """Refresh docs/screenshots/<name> only when asked (`make screenshots`), so that a test
    run does not rewrite tracked images whose content (dates, codes) changes every time."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), **options)
