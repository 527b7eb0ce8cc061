"""Browser tests against a live test server (the browser fixtures are in tests/conftest.py)."""

from __future__ import annotations

import pytest
from django.conf import settings

from curriculum.loader import load_curriculum


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture
def site(live_server, transactional_db):
    load_curriculum(settings.CURRICULUM_FILE)
    return live_server.url
