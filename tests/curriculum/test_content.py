"""The data file is complete and faithful to the roadmap's source text."""

from __future__ import annotations

from pathlib import Path

import pytest

from curriculum.models import Goal, Milestone, Phase, Project, Resource, Roadmap
from tests.curriculum.source import SOURCE, load_source

pytestmark = pytest.mark.django_db


def test_the_source_parser_finds_the_whole_roadmap():
    phases, projects = load_source()
    assert len(phases) == 5
    assert [p.weeks for p in phases] == [6, 6, 8, 6, 6]
    assert all(len(p.goals) == 3 and len(p.resources) == 4 and p.milestone for p in phases)
    assert len(projects) == 8


def test_every_phase_matches_the_source(curriculum):
    phases, _ = load_source()
    rows = list(Phase.objects.order_by("number"))
    assert [(row.number, row.title, row.weeks) for row in rows] == [
        (n, p.title, p.weeks) for n, p in enumerate(phases, start=1)
    ]
    for row, source in zip(rows, phases, strict=True):
        assert [g.text for g in row.goals.order_by("position")] == source.goals
        assert [r.title for r in row.resources.order_by("position")] == source.resources
        assert row.milestone.text == source.milestone


def test_every_project_matches_the_source(curriculum):
    _, projects = load_source()
    rows = list(Project.objects.order_by("position"))
    assert [(p.title, p.difficulty, p.description) for p in rows] == [
        (p.title, p.difficulty, p.description) for p in projects
    ]


def test_nothing_is_in_the_database_that_is_not_in_the_source(curriculum):
    phases, projects = load_source()
    assert Goal.objects.count() == sum(len(p.goals) for p in phases)
    assert Resource.objects.count() == sum(len(p.resources) for p in phases)
    assert Milestone.objects.count() == len(phases)
    assert Project.objects.count() == len(projects)


def test_the_title_is_the_sources_with_its_article_fixed(curriculum):
    source_title = SOURCE.read_text(encoding="utf-8").splitlines()[1]
    assert source_title == "How to Become a AI Inference Optimization Engineer"
    assert Roadmap.objects.get().title == source_title.replace("a AI", "an AI")


def test_resources_link_to_public_https_pages(curriculum):
    linked = Resource.objects.exclude(links=[])
    # Every resource but the generic "pricing calculators" one has a canonical page.
    assert linked.count() == Resource.objects.count() - 1
    for resource in linked:
        for link in resource.links:
            assert link["url"].startswith("https://") and link["label"]


def test_the_committed_source_is_the_shared_one():
    shared = Path(__file__).resolve().parents[3] / "shared" / "roadmap-source.txt"
    if not shared.exists():
        pytest.skip("no shared/ folder beside this checkout")
    assert SOURCE.read_bytes() == shared.read_bytes()
