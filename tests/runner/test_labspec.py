from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runner.labspec import LabSpecError, load_lab_spec, load_lab_specs, notebooks_root
from tests.runner.support import LAB, REPO


def test_it_loads_the_softmax_lab(spec):
    assert spec.slug == "softmax"
    assert spec.milestone == "advanced-optimization"
    assert spec.device_classes == ("cpu", "gpu")
    assert spec.solution == "softmax"
    assert spec.starter_path.is_file() and spec.reference_path.is_file()
    assert [c.name for c in spec.criteria] == ["correct", "finite", "speed"]
    assert spec.criteria[2].threshold_for("cpu") == 0.8


def test_to_dict_is_plain_json_and_never_names_the_reference(spec):
    data = spec.to_dict()
    text = json.dumps(data)
    assert "reference" not in data and "reference.ipynb" not in text
    assert data["criteria"][0]["threshold"] == {"cpu": 0.0, "gpu": 0.0}
    assert data["limits"]["max_cells"] == 200


def test_load_lab_specs_finds_every_lab_folder_by_slug():
    specs = load_lab_specs(REPO / "notebooks")
    assert "softmax" in specs


def test_notebooks_root_defaults_to_the_repo_and_obeys_the_env(monkeypatch, tmp_path):
    monkeypatch.delenv("INFERENCE_ROADMAP_NOTEBOOKS", raising=False)
    assert notebooks_root() == REPO / "notebooks"
    monkeypatch.setenv("INFERENCE_ROADMAP_NOTEBOOKS", str(tmp_path))
    assert notebooks_root() == tmp_path


@pytest.fixture
def lab_copy(tmp_path) -> Path:
    folder = tmp_path / "softmax"
    folder.mkdir()
    for name in ("lab.toml", "softmax.ipynb", "reference.ipynb"):
        shutil.copy(LAB / name, folder / name)
    return folder


def edit(folder: Path, old: str, new: str) -> None:
    path = folder / "lab.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ('slug = "softmax"', 'slug = "other"', "folder name"),
        ('grader = "softmax"', 'grader = "nope"', "runner/graders/nope.py"),
        ('starter = "softmax.ipynb"', 'starter = "missing.ipynb"', "starter"),
        ('device_classes = ["cpu", "gpu"]', 'device_classes = ["tpu"]', "device_classes"),
        ('comparator = ">="', 'comparator = "=>"', "comparator"),
        ("threshold = { cpu = 0.8, gpu = 0.8 }", "threshold = { cpu = true }", "finite number"),
        ("threshold = { cpu = 0.8, gpu = 0.8 }", "threshold = { tpu = 1 }", "device_classes"),
        ("cell_timeout_s = 60", "cell_timeout_s = -1", "cell_timeout_s"),
        ("cell_timeout_s = 60", "cell_timeout_s = 600", "cannot exceed"),
        ('solution = "softmax"', 'solution = "soft max"', "identifier"),
        ('name = "speed"', 'name = "correct"', "duplicate"),
        ('milestone = "advanced-optimization"', 'milstone = "x"', "unknown key"),
    ],
)
def test_it_rejects_a_bad_spec_with_a_clear_message(lab_copy, old, new, complaint):
    edit(lab_copy, old, new)
    with pytest.raises(LabSpecError, match=complaint) as error:
        load_lab_spec(lab_copy)
    assert "lab.toml" in str(error.value)


def test_it_rejects_a_file_that_is_not_toml(lab_copy):
    (lab_copy / "lab.toml").write_text("slug = \n")
    with pytest.raises(LabSpecError, match="not valid TOML"):
        load_lab_spec(lab_copy)


def test_it_rejects_a_missing_spec(tmp_path):
    with pytest.raises(LabSpecError, match="not found"):
        load_lab_spec(tmp_path)


def test_a_criterion_without_a_threshold_for_a_device_class_is_not_evaluated_there(lab_copy):
    edit(lab_copy, "threshold = { cpu = 0.8, gpu = 0.8 }", "threshold = { gpu = 0.9 }")
    spec = load_lab_spec(lab_copy)
    speed = spec.criteria[2]
    assert speed.threshold_for("cpu") is None
    assert speed.threshold_for("gpu") == 0.9


def test_an_empty_threshold_table_means_measured_and_shown_but_graded_nowhere(lab_copy):
    edit(lab_copy, "threshold = { cpu = 0.8, gpu = 0.8 }", "threshold = {}")
    speed = load_lab_spec(lab_copy).criteria[2]
    assert speed.threshold_for("cpu") is None and speed.threshold_for("gpu") is None


# --- Rubric items ([[rubric]]), scored by instructors on the web side ------------------------

RUBRIC_ITEM = """
[[rubric]]
name = "why"
title = "Explains why it is faster"
points = 3
description = "Bytes moved and launches."
answer_tag = "explanation"
"""


def add_rubric(folder: Path, *items: str) -> None:
    path = folder / "lab.toml"
    path.write_text(path.read_text() + "".join(items))


def test_a_lab_without_a_rubric_has_none(spec):
    assert spec.rubric == () and spec.to_dict()["rubric"] == []


def test_it_loads_rubric_items_in_order(lab_copy):
    second = RUBRIC_ITEM.replace('"why"', '"evidence"').replace("points = 3", "points = 4")
    add_rubric(lab_copy, RUBRIC_ITEM, second.replace('answer_tag = "explanation"\n', ""))
    spec = load_lab_spec(lab_copy)
    assert [(i.name, i.points, i.answer_tag) for i in spec.rubric] == [
        ("why", 3, "explanation"),
        ("evidence", 4, ""),
    ]
    assert spec.to_dict()["rubric"][0] == {
        "name": "why",
        "title": "Explains why it is faster",
        "points": 3,
        "description": "Bytes moved and launches.",
        "answer_tag": "explanation",
    }


def test_the_kernels_lab_scores_its_explanation_by_rubric():
    spec = load_lab_spec(REPO / "notebooks" / "kernels")
    assert [(i.name, i.points) for i in spec.rubric] == [
        ("fusions", 4),
        ("evidence", 3),
        ("why", 3),
    ]
    assert {i.answer_tag for i in spec.rubric} == {"explanation"}
    assert all(i.title and i.description for i in spec.rubric)


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("points = 3", "points = 0", "points must be a positive whole number"),
        ("points = 3", "points = -2", "points must be a positive whole number"),
        ("points = 3", "points = 2.5", "points must be a positive whole number"),
        ("points = 3", "points = true", "points must be a positive whole number"),
        ("points = 3\n", "", "points must be a positive whole number"),
        ('name = "why"', 'name = "why not"', "identifier"),
        ('name = "why"', f'name = "{"w" * 33}"', "at most 32 characters"),
        ('title = "Explains why it is faster"', 'title = " "', "title must be a non-empty"),
        ('description = "Bytes moved and launches."\n', "", "description must be a non-empty"),
        ('answer_tag = "explanation"', 'answer_tag = "two words"', "answer_tag"),
        ('answer_tag = "explanation"', "answer_tag = 3", "answer_tag"),
        (
            'answer_tag = "explanation"',
            'answer_tag = "x"\nweight = 2',
            r"unknown key\(s\) \['weight'\]",
        ),
    ],
)
def test_it_rejects_a_bad_rubric_item_with_a_clear_message(lab_copy, old, new, complaint):
    assert old in RUBRIC_ITEM
    add_rubric(lab_copy, RUBRIC_ITEM.replace(old, new, 1))
    with pytest.raises(LabSpecError, match=complaint) as error:
        load_lab_spec(lab_copy)
    assert "lab.toml" in str(error.value) and "rubric #1" in str(error.value)


def test_it_rejects_duplicate_rubric_item_names(lab_copy):
    add_rubric(lab_copy, RUBRIC_ITEM, RUBRIC_ITEM)
    with pytest.raises(LabSpecError, match="rubric #2: duplicate rubric item name 'why'"):
        load_lab_spec(lab_copy)


def test_it_rejects_a_rubric_that_is_not_tables(lab_copy):
    edit(lab_copy, 'slug = "softmax"', 'slug = "softmax"\nrubric = "by hand"')
    with pytest.raises(LabSpecError, match=r"rubric must be \[\[rubric\]\] tables"):
        load_lab_spec(lab_copy)
