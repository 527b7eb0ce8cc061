"""A GPU job goes to the queue its lab's [requirements] call for (runner/routing.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from labs.tasks import queue_for
from tests.labs.conftest import LEARNER, make_notebook

SOFTMAX = Path(__file__).resolve().parents[2] / "notebooks" / "softmax"
# Real commits: submissions are dispatched from transaction.on_commit.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pilot_on_disk(settings, tmp_path):
    """The pilot lab's folder, as load_labs read it: softmax's files under the pilot slug."""

    def write(requirements: str = "") -> None:
        folder = tmp_path / "pilot"
        shutil.copytree(SOFTMAX, folder, dirs_exist_ok=True)
        toml = folder / "lab.toml"
        text = toml.read_text().replace('slug = "softmax"', 'slug = "pilot"')
        toml.write_text(text + requirements)
        settings.NOTEBOOKS_DIR = tmp_path

    return write


def submit(client, device_class: str):
    return client.post(
        "/api/v1/labs/pilot/submissions",
        {
            "notebook": SimpleUploadedFile("pilot.ipynb", make_notebook()),
            "learner": LEARNER,
            "device_class": device_class,
        },
    )


def test_a_gpu_job_goes_to_the_queue_of_its_labs_requirements(client, lab, sent, pilot_on_disk):
    pilot_on_disk('\n[requirements]\ncompute_capability = "9.0"\ngpu_memory_gb = 40\n')
    assert submit(client, "gpu").status_code == 201
    assert sent.call_args.kwargs["queue"] == "gpu.sm90.mem40g"


def test_a_lab_without_requirements_takes_any_gpu_and_cpu_jobs_go_to_cpu(
    client, lab, sent, pilot_on_disk
):
    pilot_on_disk()
    submit(client, "gpu")
    submit(client, "cpu")
    assert [c.kwargs["queue"] for c in sent.call_args_list] == ["gpu", "cpu"]


def test_a_lab_file_gone_from_disk_still_routes_to_some_gpu(client, lab, sent, settings, caplog):
    settings.NOTEBOOKS_DIR = Path("/nonexistent")
    submit(client, "gpu")
    assert sent.call_args.kwargs["queue"] == "gpu"
    assert "routing" in caplog.text and "to 'gpu'" in caplog.text


def test_queue_for_reads_only_the_submissions_own_lab(lab, pilot_on_disk):
    from labs.models import Submission

    pilot_on_disk('\n[requirements]\ngpu_model = "h100"\n')
    submission = Submission(lab=lab, learner_key=LEARNER, device_class="gpu", notebook="{}")
    assert queue_for(submission) == "gpu.h100"
