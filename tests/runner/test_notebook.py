from __future__ import annotations

import json

import nbformat
import pytest

from runner.notebook import (
    NotebookRejected,
    extract_solution,
    is_protected,
    sanitise_notebook,
    validate_notebook,
)
from tests.runner.support import FIXTURES, LAB

LIMITS = {"max_bytes": 2_000_000, "max_cells": 200}


def starter_bytes() -> bytes:
    return (LAB / "softmax.ipynb").read_bytes()


def starter():
    return nbformat.read(LAB / "softmax.ipynb", as_version=4)


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("not_json.ipynb", r"not valid JSON \(line 1, column 13"),
        ("binary.ipynb", "binary"),
        ("not_utf8.ipynb", r"not UTF-8 text \(byte 0xe9 at offset"),
        ("not_a_notebook.ipynb", "JSON but not a Jupyter notebook"),
        ("nbformat3.ipynb", "nbformat 3, which is not supported"),
        ("no_solution.ipynb", "No code cell is tagged 'solution'"),
        ("r_kernel.ipynb", "kernel language is 'R'; labs run Python 3 only"),
    ],
)
def test_it_rejects_each_malformed_upload_with_its_own_message(fixture, message):
    with pytest.raises(NotebookRejected, match=message):
        validate_notebook((FIXTURES / fixture).read_bytes(), **LIMITS)


def test_it_rejects_an_upload_over_the_size_cap_saying_both_sizes():
    raw = starter_bytes() + b" " * 2_000_000
    with pytest.raises(NotebookRejected, match=r"is 2\.\d MB, over the 2\.0 MB limit"):
        validate_notebook(raw, **LIMITS)


def test_it_rejects_too_many_cells_saying_the_count_and_the_limit():
    data = json.loads(starter_bytes())
    data["cells"] += [nbformat.v4.new_code_cell("x = 1") for _ in range(201)]
    with pytest.raises(NotebookRejected, match=r"has 209 cells; the limit is 200"):
        validate_notebook(json.dumps(data).encode(), **LIMITS)


def test_it_rejects_a_newer_nbformat():
    data = json.loads(starter_bytes())
    data["nbformat"] = 5
    with pytest.raises(NotebookRejected, match="nbformat 5; only nbformat 4"):
        validate_notebook(json.dumps(data).encode(), **LIMITS)


def test_it_rejects_a_solution_tag_on_a_markdown_cell_only():
    data = json.loads(starter_bytes())
    for cell in data["cells"]:
        if cell["cell_type"] == "code":
            cell["metadata"].pop("tags", None)
    data["cells"][0]["metadata"]["tags"] = ["solution"]
    with pytest.raises(NotebookRejected, match="No code cell is tagged"):
        validate_notebook(json.dumps(data).encode(), **LIMITS)


def test_it_rejects_a_cell_with_non_text_source():
    data = json.loads(starter_bytes())
    data["cells"][2]["source"] = 42
    with pytest.raises(NotebookRejected, match="Cell 3's source is not text"):
        validate_notebook(json.dumps(data).encode(), **LIMITS)


def test_it_accepts_the_starter_and_every_graded_fixture():
    for path in [LAB / "softmax.ipynb", LAB / "reference.ipynb", FIXTURES / "wrong_dim.ipynb"]:
        nb = validate_notebook(path.read_bytes(), **LIMITS)
        assert nb.nbformat == 4


def test_it_accepts_a_byte_order_mark():
    validate_notebook(b"\xef\xbb\xbf" + starter_bytes(), **LIMITS)


def test_validation_does_not_import_torch_or_nbclient():
    import subprocess
    import sys

    code = (
        "import sys; from runner.notebook import validate_notebook; "
        "print('torch' in sys.modules, 'nbclient' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=LAB.parents[1]
    )
    assert result.stdout.split() == ["False", "False"]


def submission_from_starter():
    return nbformat.read(LAB / "softmax.ipynb", as_version=4)


def test_sanitise_clears_outputs_and_forces_a_python3_kernel():
    nb = submission_from_starter()
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="PASSED")]
    nb.cells[2].execution_count = 7
    nb.metadata["kernelspec"] = {"name": "evil", "display_name": "x", "language": "python"}
    nb.metadata["widgets"] = {"huge": "state"}
    clean = sanitise_notebook(nb, starter=starter())
    assert all(c.get("outputs", []) == [] for c in clean.cells)
    assert all(c.get("execution_count") is None for c in clean.cells if c.cell_type == "code")
    assert clean.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in clean.metadata
    nbformat.validate(clean)


def test_sanitise_restores_an_edited_protected_cell_from_the_starter():
    nb = submission_from_starter()
    check = next(c for c in nb.cells if c.get("id") == "self-check")
    assert is_protected(check)
    check.source = "print('all tests passed')"
    check.metadata = {}
    clean = sanitise_notebook(nb, starter=starter())
    restored = next(c for c in clean.cells if c.id == "self-check")
    assert "torch.softmax" in restored.source
    assert restored.metadata["editable"] is False


def test_sanitise_puts_back_a_deleted_protected_cell_where_it_was():
    nb = submission_from_starter()
    order = [c.id for c in nb.cells]
    nb.cells = [c for c in nb.cells if c.id != "overflow"]
    clean = sanitise_notebook(nb, starter=starter())
    assert [c.id for c in clean.cells] == order


def test_sanitise_keeps_the_learners_solution_and_own_cells():
    nb = submission_from_starter()
    solution = next(c for c in nb.cells if "solution" in c.metadata.get("tags", []))
    solution.source = "def softmax(x):\n    return x"
    nb.cells.append(nbformat.v4.new_code_cell("print('mine')"))
    clean = sanitise_notebook(nb, starter=starter())
    assert any(c.source == "def softmax(x):\n    return x" for c in clean.cells)
    assert clean.cells[-1].source == "print('mine')"


def test_sanitise_makes_cell_ids_valid_and_unique():
    nb = submission_from_starter()
    nb.cells[1]["id"] = nb.cells[0]["id"]
    nb.cells[3]["id"] = "not a valid id!"
    clean = sanitise_notebook(nb, starter=None)
    ids = [c.id for c in clean.cells]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "intro"
    assert all(" " not in i for i in ids)


def test_extract_solution_takes_only_solution_cells_from_the_sanitised_notebook():
    nb = sanitise_notebook(submission_from_starter(), starter=starter())
    extra = nbformat.v4.new_code_cell("HELPER = 1", metadata={"tags": ["solution"]})
    nb.cells.append(extra)
    solution = extract_solution(nb)
    assert "def softmax" in solution.text
    assert "HELPER = 1" in solution.text
    assert "torch.softmax(x.double()" not in solution.text  # the self-check is not a solution
    compile(solution.text, "solution.py", "exec")
    assert [s.cell_number for s in solution.spans] == [5, len(nb.cells)]


def test_extract_solution_maps_lines_back_to_cells():
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("hi"),
            nbformat.v4.new_code_cell("a = 1\nb = 2", metadata={"tags": ["solution"]}),
        ]
    )
    solution = extract_solution(nb)
    lines = solution.text.split("\n")
    line = lines.index("b = 2") + 1
    assert solution.locate(line) == (2, 2)
    assert solution.locate(1) is None


def test_extract_solution_neutralises_ipython_magics():
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "%matplotlib inline\n!pip install x\ndef f():\n    %time g()\n    return 1",
                metadata={"tags": ["solution"]},
            ),
            nbformat.v4.new_code_cell("%%bash\necho hi", metadata={"tags": ["solution"]}),
        ]
    )
    text = extract_solution(nb).text
    namespace: dict = {}
    exec(compile(text, "solution.py", "exec"), namespace)
    assert namespace["f"]() == 1
    assert "echo hi" in text
