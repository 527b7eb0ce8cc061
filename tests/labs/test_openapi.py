"""The OpenAPI file describes the routes and fields the API actually serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from django.urls import reverse

from labs.api import submission_json

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs/api/openapi.yaml").read_text())


def test_every_documented_path_is_routed():
    routes = {
        "/api/v1/labs/{lab}/submissions": reverse("api-submit", args=["x"]).replace("x", "{lab}"),
        "/api/v1/submissions/{id}": reverse(
            "api-submission", args=["00000000-0000-0000-0000-000000000000"]
        ).replace("00000000-0000-0000-0000-000000000000", "{id}"),
        "/api/v1/submissions": reverse("api-learner-submissions"),
        "/api/v1/verifications/check": reverse("api-verify"),
    }
    assert set(SPEC["paths"]) == set(routes)
    for documented, routed in routes.items():
        assert documented == routed


@pytest.mark.django_db
def test_the_submission_schema_lists_exactly_the_fields_served(rf, lab):
    from labs.models import Submission

    submission = Submission.objects.create(lab=lab, learner_key="0" * 32, notebook="{}")
    served = submission_json(rf.get("/"), submission)
    assert set(served) == set(SPEC["components"]["schemas"]["Submission"]["properties"])
