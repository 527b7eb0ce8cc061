"""Loading the data file: complete, idempotent, deletes what was removed, keeps aliases."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.management import CommandError, call_command

from curriculum.loader import CurriculumError, load_curriculum
from curriculum.models import Goal, Phase, Project, Resource, SlugAlias

pytestmark = pytest.mark.django_db


@pytest.fixture
def data() -> dict:
    return yaml.safe_load(settings.CURRICULUM_FILE.read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "roadmap.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_it_loads_every_item():
    result = load_curriculum(settings.CURRICULUM_FILE)
    assert Phase.objects.count() == 5
    assert Goal.objects.count() == 15
    assert Resource.objects.count() == 20
    assert Project.objects.count() == 8
    assert result.created == 1 + 5 + 15 + 20 + 5 + 8  # roadmap, phases, goals, resources, ...


def test_a_second_load_changes_nothing():
    load_curriculum(settings.CURRICULUM_FILE)
    ids = list(Goal.objects.values_list("pk", "slug"))
    result = load_curriculum(settings.CURRICULUM_FILE)
    assert not result.changed, result.changes
    assert list(Goal.objects.values_list("pk", "slug")) == ids


def test_it_updates_changed_text_in_place(tmp_path, data):
    load_curriculum(settings.CURRICULUM_FILE)
    goal = Goal.objects.get(slug="foundations.gpu-architecture")
    data["phases"][0]["goals"][1]["text"] = "Learn GPU architecture, for real"
    result = load_curriculum(write(tmp_path, data))
    assert result.updated == 1 and result.created == 0 and result.deleted == 0
    goal.refresh_from_db()
    assert goal.text == "Learn GPU architecture, for real"


def test_it_deletes_items_removed_from_the_file(tmp_path, data):
    load_curriculum(settings.CURRICULUM_FILE)
    del data["projects"][-1]
    del data["phases"][4]["goals"][0]
    result = load_curriculum(write(tmp_path, data))
    assert result.deleted == 2
    assert not Project.objects.filter(slug="flashattention-from-scratch").exists()
    assert Goal.objects.count() == 14


def test_it_reorders_phases_without_breaking_their_unique_numbers(tmp_path, data):
    load_curriculum(settings.CURRICULUM_FILE)
    data["phases"].reverse()
    load_curriculum(write(tmp_path, data))
    assert list(Phase.objects.values_list("slug", flat=True))[0] == "specialization"
    assert Phase.objects.get(slug="foundations").number == 5


def test_a_renamed_slug_goes_through_the_alias_map(tmp_path, data):
    load_curriculum(settings.CURRICULUM_FILE)
    data["phases"][0]["goals"][0]["slug"] = "foundations.transformers"
    data["aliases"] = {"foundations.transformer-internals": "foundations.transformers"}
    load_curriculum(write(tmp_path, data))
    assert SlugAlias.objects.get().new_slug == "foundations.transformers"
    assert Goal.objects.filter(slug="foundations.transformers").exists()


def test_it_rejects_a_duplicate_slug_and_changes_nothing(tmp_path, data):
    load_curriculum(settings.CURRICULUM_FILE)
    bad = copy.deepcopy(data)
    bad["phases"][1]["goals"][0]["slug"] = "foundations.gpu-architecture"
    bad["projects"].pop()
    with pytest.raises(CurriculumError, match="already used"):
        load_curriculum(write(tmp_path, bad))
    assert Project.objects.count() == 8


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["aliases"].update({"foundations.gpu-architecture": "x"}), "still the slug"),
        (lambda d: d["aliases"].update({"old": "nowhere"}), "not a current slug"),
        (lambda d: d["projects"][0].update({"difficulty": "expert"}), "difficulty must be"),
        (lambda d: d["phases"][0].update({"weeks": 0}), "weeks must be"),
        (lambda d: d["phases"][0].pop("milestone"), "missing milestone"),
        (lambda d: d["projects"][0].update({"phase": "phase-9"}), "unknown phase"),
        (lambda d: d["phases"][0]["resources"][0]["links"][0].update({"url": "http://x"}), "https"),
    ],
)
def test_it_explains_what_is_wrong_with_a_bad_file(tmp_path, data, mutate, message):
    mutate(data)
    with pytest.raises(CurriculumError, match=message):
        load_curriculum(write(tmp_path, data))


def test_the_command_reports_what_it_did(capsys):
    call_command("load_curriculum")
    call_command("load_curriculum")
    out = capsys.readouterr().out
    assert "54 created" in out and "54 unchanged" in out


def test_the_command_fails_clearly_on_a_missing_file(tmp_path):
    with pytest.raises(CommandError, match="No such file"):
        call_command("load_curriculum", str(tmp_path / "nope.yaml"))
