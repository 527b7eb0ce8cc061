"""The two contracts between the web side and the worker: the job and the report.

Both are plain JSON dicts so that they travel through any Celery broker unchanged. The web
side builds jobs and records reports; it never needs to import anything else from runner/.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

JOB_SCHEMA = "inference-roadmap/job@1"
REPORT_SCHEMA = "inference-roadmap/report@1"

# Sandbox limits a job may set (never above the lab's): bytes of memory, processes and
# threads, and bytes of each private tmpfs.
OPTIONAL_LIMITS = ("memory_bytes", "max_processes", "disk_bytes")

STATUSES = ("passed", "failed", "error", "timeout", "rejected")
DEVICE_CLASSES = ("cpu", "gpu")
COMPARATORS = ("<=", ">=", "<", ">", "==")

# The seed is the secret behind every graded input; 128 bits is enough that it cannot be
# guessed and short enough to log its fingerprint, never itself.
_SEED = re.compile(r"^[0-9a-f]{32}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class JobInvalid(ValueError):
    """The job dict does not follow JOB_SCHEMA: a bug on the sending side, not the learner's."""


@dataclass(frozen=True)
class JobLimits:
    cell_timeout_s: float
    total_timeout_s: float
    max_output_bytes: int
    # Optional: the web side may leave them out; the worker then uses the lab's own.
    memory_bytes: int | None = None
    max_processes: int | None = None
    disk_bytes: int | None = None


@dataclass(frozen=True)
class Job:
    submission_id: str
    attempt: int
    lab: str
    device_class: str
    notebook: Mapping[str, Any]
    seed: str
    limits: JobLimits


def parse_job(data: Mapping[str, Any]) -> Job:
    """Check a job dict field by field and return it typed; raise JobInvalid naming the field."""
    if not isinstance(data, Mapping):
        raise JobInvalid(f"a job must be a JSON object, not {type(data).__name__}")
    if data.get("schema") != JOB_SCHEMA:
        raise JobInvalid(f"schema must be {JOB_SCHEMA!r}, got {data.get('schema')!r}")
    submission_id = _field(data, "submission_id", str)
    if not _SUBMISSION_ID.match(submission_id):
        raise JobInvalid("submission_id must be 1-128 characters of [A-Za-z0-9_.:-]")
    attempt = _field(data, "attempt", int)
    if attempt < 1:
        raise JobInvalid("attempt must be 1 or more")
    lab = _field(data, "lab", str)
    if not _SLUG.match(lab):
        raise JobInvalid(f"lab {lab!r} is not a lab slug")
    device_class = _field(data, "device_class", str)
    if device_class not in DEVICE_CLASSES:
        raise JobInvalid(f"device_class must be one of {DEVICE_CLASSES}, got {device_class!r}")
    notebook = _field(data, "notebook", Mapping)
    seed = _field(data, "seed", str)
    if not _SEED.match(seed):
        raise JobInvalid("seed must be 32 lowercase hex characters")
    raw_limits = _field(data, "limits", Mapping)
    limits = JobLimits(
        cell_timeout_s=_positive(raw_limits, "cell_timeout_s"),
        total_timeout_s=_positive(raw_limits, "total_timeout_s"),
        max_output_bytes=int(_positive(raw_limits, "max_output_bytes")),
        **{
            name: int(_positive(raw_limits, name))
            for name in OPTIONAL_LIMITS
            if raw_limits.get(name) is not None
        },
    )
    return Job(
        submission_id=submission_id,
        attempt=attempt,
        lab=lab,
        device_class=device_class,
        notebook=notebook,
        seed=seed,
        limits=limits,
    )


def _field(data: Mapping[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    # bool is an int in Python; a job with attempt=True is a bug we want to hear about.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise JobInvalid(f"{name} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _positive(data: Mapping[str, Any], name: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise JobInvalid(f"limits.{name} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CriterionResult:
    """One row of the verdict table the learner sees."""

    name: str
    metric: str
    measured: float | None
    threshold: float | None
    comparator: str
    passed: bool
    explanation: str
    hint: str
    unit: str
    evaluated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_report(
    *,
    submission_id: str,
    attempt: int,
    lab: str,
    device_class: str,
    status: str,
    message: str,
    criteria: Sequence[CriterionResult] = (),
    metrics: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    plots: Sequence[Mapping[str, str]] = (),
    log_tail: str = "",
    executed_notebook: Mapping[str, Any] | None = None,
    durations: Mapping[str, float] | None = None,
    mismatches: Sequence[Mapping[str, Any]] = (),
    artifacts: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """Build a report dict with every key present, so readers never need .get() defaults.
    `artifacts` are files the learner may download from the result page (a profiler trace):
    `{name, content_type, data_base64}`, the data gzip'd then base64-encoded."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    report = {
        "schema": REPORT_SCHEMA,
        "submission_id": submission_id,
        "attempt": attempt,
        "lab": lab,
        "device_class": device_class,
        "status": status,
        "message": message,
        "criteria": [c.to_dict() for c in criteria],
        "metrics": dict(metrics or {}),
        "environment": dict(environment or {}),
        "plots": [dict(p) for p in plots],
        "log_tail": log_tail,
        "executed_notebook": dict(executed_notebook) if executed_notebook is not None else None,
        "durations": {k: round(v, 3) for k, v in (durations or {}).items()},
        "mismatches": [dict(m) for m in mismatches],
        "artifacts": [dict(a) for a in artifacts],
    }
    return json_safe(report)


def json_safe(value: Any) -> Any:
    """Strict JSON has no NaN or Infinity, and PostgreSQL's jsonb refuses them; a NaN that the
    learner's code produced is written as the string "NaN" (likewise "Infinity", "-Infinity")."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# Keys a report may lack: a worker older than the key still sends valid reports.
OPTIONAL_REPORT_KEYS = frozenset({"artifacts"})
REPORT_KEYS = (
    frozenset(
        new_report(
            submission_id="x", attempt=1, lab="x", device_class="cpu", status="error", message=""
        )
    )
    - OPTIONAL_REPORT_KEYS
)


def check_report(report: Mapping[str, Any]) -> None:
    """Raise ValueError unless `report` follows REPORT_SCHEMA; the web side checks on receipt."""
    if not isinstance(report, Mapping):
        raise ValueError("a report must be a JSON object")
    if report.get("schema") != REPORT_SCHEMA:
        raise ValueError(f"unknown report schema {report.get('schema')!r}")
    missing = REPORT_KEYS - set(report)
    if missing:
        raise ValueError(f"report lacks {sorted(missing)}")
    if report["status"] not in STATUSES:
        raise ValueError(f"unknown report status {report['status']!r}")
    if not isinstance(report["message"], str) or not report["message"]:
        raise ValueError("report message must be a non-empty string")
    if not isinstance(report.get("artifacts", []), list):
        raise ValueError("report artifacts must be a list")
