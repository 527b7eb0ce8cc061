from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from curriculum.loader import load_curriculum

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def curriculum(db):
    """The real roadmap, loaded from the data file."""
    return load_curriculum(settings.CURRICULUM_FILE)
