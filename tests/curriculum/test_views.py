"""Every roadmap page renders from the data; the difficulty filter answers htmx with a
fragment; old slugs redirect; the admin shows the curriculum read-only."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth.models import User

from curriculum.models import Phase, Project, SlugAlias

pytestmark = pytest.mark.django_db


def groups_of(response) -> dict:
    match = re.search(
        r'<script id="progress-groups" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    return json.loads(match.group(1))


def test_the_overview_shows_every_phase_and_the_computed_duration(client, curriculum):
    response = client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    for phase in Phase.objects.all():
        assert phase.title.replace("&", "&amp;") in body
        assert phase.milestone.text.replace("<", "&lt;") in body
    assert "<strong>32 weeks</strong>" in body
    assert "about <strong>8 months</strong>" in body
    assert "weeks 13–20" in body  # Phase 3 starts after 6 + 6 weeks


def test_the_duration_follows_the_data(client, curriculum):
    Phase.objects.filter(slug="advanced-optimization").update(weeks=12)
    body = client.get("/").content.decode()
    assert "<strong>36 weeks</strong>" in body and "about <strong>9 months</strong>" in body


def test_the_overview_publishes_progress_groups_for_the_bars(client, curriculum):
    groups = groups_of(client.get("/"))
    assert groups["foundations"] == [
        "foundations.transformer-internals",
        "foundations.gpu-architecture",
        "foundations.profiling-benchmarking",
        "foundations.milestone",
    ]
    assert len(groups["overall"]) == 20
    assert len(groups["projects"]) == 8


def test_a_phase_page_shows_goals_resources_milestone_and_links(client, curriculum):
    response = client.get("/phases/serving-quantization/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "Apply INT8 and INT4 quantization using GPTQ and AWQ" in body
    assert 'href="https://arxiv.org/abs/2210.17323"' in body
    assert "demonstrate 3x throughput improvement with &lt;1% quality loss" in body
    assert 'data-status-for="serving-quantization.milestone"' in body
    assert "Labs that prove it" in body
    assert 'rel="prev"' in body and 'rel="next"' in body


def test_an_unknown_phase_is_404(client, curriculum):
    assert client.get("/phases/no-such-phase/").status_code == 404


def test_an_old_phase_slug_redirects_to_the_new_one(client, curriculum):
    SlugAlias.objects.create(old_slug="basics", new_slug="foundations")
    response = client.get("/phases/basics/")
    assert response.status_code == 301
    assert response["Location"] == "/phases/foundations/"


def test_the_projects_page_lists_all_eight(client, curriculum):
    body = client.get("/projects/").content.decode()
    assert body.count('class="card project"') == 8
    assert "<html" in body


def test_the_difficulty_filter_works_without_javascript(client, curriculum):
    body = client.get("/projects/?difficulty=intermediate").content.decode()
    assert body.count('class="card project"') == 3
    assert 'value="intermediate" checked' in body


def test_the_difficulty_filter_answers_htmx_with_only_the_list(client, curriculum):
    response = client.get("/projects/?difficulty=advanced", headers={"HX-Request": "true"})
    body = response.content.decode()
    assert "<html" not in body and 'id="project-list"' in body
    assert body.count('class="card project"') == 4
    assert all(p.title in body for p in Project.objects.filter(difficulty="advanced"))


def test_an_unknown_difficulty_shows_everything(client, curriculum):
    body = client.get("/projects/?difficulty=impossible").content.decode()
    assert body.count('class="card project"') == 8


def test_a_project_page_shows_its_description_and_phase(client, curriculum):
    body = client.get("/projects/speculative-decoding/").content.decode()
    assert "1B draft model proposes tokens verified by a 13B target model" in body
    assert 'href="/phases/advanced-optimization/"' in body


def test_the_admin_shows_the_curriculum_read_only(client, curriculum):
    admin = User.objects.create_superuser("admin", "admin@example.org", "pw")
    client.force_login(admin)
    assert client.get("/admin/curriculum/goal/").status_code == 200
    assert client.get("/admin/curriculum/goal/add/").status_code == 403
    goal_id = Phase.objects.first().goals.first().pk
    response = client.post(f"/admin/curriculum/goal/{goal_id}/delete/", {"post": "yes"})
    assert response.status_code == 403


def test_pages_load_htmx_from_our_own_static_files(client, curriculum):
    body = client.get("/").content.decode()
    assert '<script src="/static/vendor/htmx/htmx.min.js"' in body
    assert "unpkg" not in body and "cdn" not in body.lower()
