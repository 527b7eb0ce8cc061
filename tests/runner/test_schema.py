from __future__ import annotations

import json

import pytest

from runner.schema import (
    REPORT_SCHEMA,
    CriterionResult,
    JobInvalid,
    check_report,
    new_report,
    parse_job,
)
from tests.runner.support import make_job


def test_it_parses_a_valid_job():
    job = parse_job(make_job({"cells": []}))
    assert job.lab == "softmax"
    assert job.limits.cell_timeout_s == 5.0
    assert job.limits.max_output_bytes == 200_000


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"schema": "inference-roadmap/job@2"}, "schema"),
        ({"attempt": 0}, "attempt"),
        ({"attempt": True}, "attempt"),
        ({"lab": "../etc"}, "lab"),
        ({"device_class": "tpu"}, "device_class"),
        ({"seed": "not-hex"}, "seed"),
        ({"seed": "ABCDEF0123456789ABCDEF0123456789"}, "seed"),
        ({"notebook": "{}"}, "notebook"),
        ({"submission_id": "a b"}, "submission_id"),
        ({"limits": {"cell_timeout_s": 0, "total_timeout_s": 1, "max_output_bytes": 1}}, "cell"),
    ],
)
def test_it_rejects_a_malformed_job_naming_the_field(change, complaint):
    with pytest.raises(JobInvalid, match=complaint):
        parse_job({**make_job({"cells": []}), **change})


def test_it_builds_a_report_with_every_key_and_checks_it():
    report = new_report(
        submission_id="s",
        attempt=2,
        lab="softmax",
        device_class="cpu",
        status="failed",
        message="1 of 3 criteria failed.",
        criteria=[
            CriterionResult("correct", "m", 3.0, 0.0, "==", False, "e", "h", "elements", True)
        ],
    )
    assert report["schema"] == REPORT_SCHEMA
    assert report["criteria"][0]["passed"] is False
    check_report(report)


def test_it_writes_non_finite_numbers_as_strings_so_the_report_is_strict_json():
    report = new_report(
        submission_id="s",
        attempt=1,
        lab="softmax",
        device_class="cpu",
        status="failed",
        message="m",
        metrics={"max_abs_error": float("inf"), "values": [float("nan"), -float("inf"), 1.5]},
    )
    assert report["metrics"] == {"max_abs_error": "Infinity", "values": ["NaN", "-Infinity", 1.5]}
    json.dumps(report, allow_nan=False)


def test_it_refuses_an_unknown_status():
    with pytest.raises(ValueError, match="status"):
        new_report(
            submission_id="s", attempt=1, lab="x", device_class="cpu", status="ok", message="m"
        )


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"schema": "inference-roadmap/report@0"}, "schema"),
        ({"status": "great"}, "status"),
        ({"message": ""}, "message"),
    ],
)
def test_check_report_rejects_what_the_web_side_must_not_record(change, complaint):
    report = new_report(
        submission_id="s", attempt=1, lab="x", device_class="cpu", status="passed", message="m"
    )
    report.update(change)
    with pytest.raises(ValueError, match=complaint):
        check_report(report)


def test_check_report_rejects_a_report_missing_keys():
    report = new_report(
        submission_id="s", attempt=1, lab="x", device_class="cpu", status="passed", message="m"
    )
    del report["criteria"]
    with pytest.raises(ValueError, match="criteria"):
        check_report(report)
