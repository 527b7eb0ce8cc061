from __future__ import annotations

import os
import subprocess
import sys
from unittest import mock

import pytest

from runner.broker import broker_settings_from_env, grade_queue
from tests.runner.support import REPO


def test_the_default_broker_is_a_shared_filesystem_folder(tmp_path):
    settings = broker_settings_from_env({"VAR_DIR": str(tmp_path)})
    options = settings["broker_transport_options"]
    assert settings["broker_url"] == "filesystem://"
    assert (
        options["data_folder_in"]
        == options["data_folder_out"]
        == str(tmp_path / "broker" / "queue")
    )
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        assert (tmp_path / "broker" / options[key].rsplit("/", 1)[1]).is_dir()


def test_broker_dir_overrides_the_folder(tmp_path):
    settings = broker_settings_from_env({"BROKER_DIR": str(tmp_path / "b")})
    assert settings["broker_transport_options"]["data_folder_in"] == str(tmp_path / "b" / "queue")


def test_a_real_broker_url_needs_no_folders_and_keeps_the_delivery_guarantees(tmp_path):
    settings = broker_settings_from_env({"CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"})
    assert settings["broker_url"] == "redis://127.0.0.1:6379/0"
    assert "broker_transport_options" not in settings
    assert settings["task_acks_late"] and settings["task_reject_on_worker_lost"]
    assert settings["worker_prefetch_multiplier"] == 1
    assert settings["accept_content"] == ["json"]


def test_jobs_go_to_the_queue_of_their_device_class():
    assert grade_queue("gpu") == "gpu"


def test_no_runner_module_imports_django():
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "runner").rglob("*.py")
        if any(
            line.lstrip().startswith(("import django", "from django"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []


def test_the_worker_loads_no_django_settings_even_when_they_are_configured():
    # kombu imports django.utils.functional on its own when Django happens to be installed;
    # what must never happen is Celery's Django fix-up loading settings (and credentials).
    code = (
        "import sys, runner.worker, runner.pipeline, runner.graders.softmax; "
        "print(sorted(m for m in ('django.conf', 'config.settings', 'labs') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )
    assert out.stdout.strip() == "[]"


@pytest.fixture
def worker(monkeypatch, tmp_path):
    from runner import worker

    monkeypatch.setenv("VAR_DIR", str(tmp_path))  # where the worker keeps its job marks
    return worker


def test_the_grade_task_has_the_name_the_web_side_sends(worker):
    assert "runner.grade" in worker.app.tasks
    assert worker.app.conf.task_acks_late is True
    assert worker.app.conf.worker_prefetch_multiplier == 1
    assert worker.app.conf.task_soft_time_limit > 300


def test_progress_is_throttled_but_stage_changes_always_go_out(worker):
    clock = iter([0.0, 0.1, 0.2, 0.7, 0.8, 0.9])
    with (
        mock.patch.object(worker.app, "send_task") as send,
        mock.patch.object(worker.time, "monotonic", lambda: next(clock)),
    ):
        progress = worker.ProgressSender(submission_id="s1", attempt=2, interval_s=0.5)
        progress("starting", cells=8)
        progress("running", cell=1, cells=8)  # 0.1 s later: dropped
        progress("running", cell=2, cells=8)  # dropped
        progress("running", cell=3, cells=8)  # 0.7 s: sent
        progress("grading")  # a new stage: sent
        progress("done", status="passed")
    sent = [call.kwargs["args"] for call in send.call_args_list]
    assert sent == [
        ["s1", 2, "starting", {"cells": 8}],
        ["s1", 2, "running", {"cell": 3, "cells": 8}],
        ["s1", 2, "grading", {}],
        ["s1", 2, "done", {"status": "passed"}],
    ]
    assert all(call.kwargs["queue"] == "web" for call in send.call_args_list)


def test_a_broker_hiccup_while_sending_progress_does_not_stop_grading(worker):
    with mock.patch.object(worker.app, "send_task", side_effect=OSError("down")):
        worker.ProgressSender(submission_id="s", attempt=1, interval_s=0)("starting")


def test_the_grade_task_sends_the_report_to_the_web_queue(worker):
    report = {"status": "failed", "submission_id": "s1"}
    with (
        mock.patch.object(worker, "run_job", return_value=report) as run_job,
        mock.patch.object(worker.app, "send_task") as send,
    ):
        status = worker.grade.run({"submission_id": "s1", "attempt": 1})
    assert status == "failed"
    assert run_job.call_args.args[0] == {"submission_id": "s1", "attempt": 1}
    last = send.call_args_list[-1]
    assert last.args[0] == "labs.record_report"
    assert last.kwargs["args"] == [report] and last.kwargs["queue"] == "web"


def test_an_unexpected_failure_still_sends_an_error_report(worker):
    with (
        mock.patch.object(worker, "run_job", side_effect=RuntimeError("bug")),
        mock.patch.object(worker.app, "send_task") as send,
    ):
        status = worker.grade.run({"submission_id": "s1", "attempt": 3, "lab": "softmax"})
    report = send.call_args_list[-1].kwargs["args"][0]
    assert status == "error"
    assert report["status"] == "error" and report["attempt"] == 3
    assert "not your code" in report["message"]


def test_the_soft_time_limit_becomes_a_timeout_report(worker):
    from celery.exceptions import SoftTimeLimitExceeded

    with (
        mock.patch.object(worker, "run_job", side_effect=SoftTimeLimitExceeded()),
        mock.patch.object(worker.app, "send_task") as send,
    ):
        worker.grade.run({"submission_id": "s1", "attempt": 1})
    report = send.call_args_list[-1].kwargs["args"][0]
    assert report["status"] == "timeout"


def test_a_graded_job_leaves_no_mark_behind(worker, tmp_path):
    report = {"status": "passed", "submission_id": "s1"}
    with (
        mock.patch.object(worker, "run_job", return_value=report),
        mock.patch.object(worker.app, "send_task"),
    ):
        worker.grade.run({"submission_id": "s1", "attempt": 1})
    assert list((tmp_path / "unfinished").iterdir()) == []


def test_a_job_whose_run_here_died_is_reported_lost_and_not_run_again(worker, tmp_path):
    # The mark a run leaves while it grades, unlocked: the process that held it is gone.
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "s1-a2").touch()
    with (
        mock.patch.object(worker, "run_job") as run_job,
        mock.patch.object(worker.app, "send_task") as send,
    ):
        status = worker.grade.run({"submission_id": "s1", "attempt": 2, "lab": "softmax"})
    assert status == "lost" and not run_job.called
    (call,) = send.call_args_list
    assert call.args[0] == "labs.record_worker_lost"
    assert call.kwargs["args"] == ["s1", 2] and call.kwargs["queue"] == "web"
    assert not (tmp_path / "unfinished" / "s1-a2").exists()


def test_a_later_attempt_of_the_same_submission_runs(worker, tmp_path):
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "s1-a1").touch()
    report = {"status": "passed", "submission_id": "s1"}
    with (
        mock.patch.object(worker, "run_job", return_value=report) as run_job,
        mock.patch.object(worker.app, "send_task"),
    ):
        assert worker.grade.run({"submission_id": "s1", "attempt": 2}) == "passed"
    assert run_job.called


def test_a_job_the_worker_cannot_mark_still_runs(worker, tmp_path):
    (tmp_path / "unfinished").write_text("not a folder")
    report = {"status": "passed", "submission_id": "s1"}
    with (
        mock.patch.object(worker, "run_job", return_value=report) as run_job,
        mock.patch.object(worker.app, "send_task"),
    ):
        assert worker.grade.run({"submission_id": "s1", "attempt": 1}) == "passed"
    assert run_job.called
