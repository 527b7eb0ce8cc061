"""One job in, one report out: validate, sanitise, execute, extract, grade.

`run_job` never raises for anything a learner can cause: a bad notebook is "rejected", a
raising cell is "error", a hang is "timeout", and the grade is "passed" or "failed". Worker
problems (no sandbox, unknown lab, malformed job) come back as "error" reports whose message
says the worker, not the learner, is at fault.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nbformat

from runner import safeio
from runner.broker import var_dir
from runner.environment import describe_environment
from runner.execute import strip_ansi
from runner.gpu import GpuMemoryCheck, gpu_indices
from runner.gpu_health import GpuHealthCheck, HealthVerdict
from runner.gpu_share import GpuAdmission, Request, Ticket
from runner.graders import load_grader
from runner.health import WORKER_HEALTH
from runner.labspec import LabSpec, LabSpecError, load_lab_spec, notebooks_root
from runner.notebook import (
    NotebookRejected,
    extract_solution,
    sanitise_notebook,
    validate_notebook,
)
from runner.notebook_run import LOG_TAIL_BYTES, run_notebook
from runner.sandbox import ResourceLimits, SandboxPolicy, SandboxUnavailable
from runner.schema import Job, JobInvalid, new_report, parse_job

logger = logging.getLogger(__name__)

WORKDIR_ENV = "RUNNER_WORKDIR"
KEEP_ENV = "RUNNER_KEEP_JOBS"

ProgressCallback = Callable[..., None]


def default_workroot() -> Path:
    configured = os.environ.get(WORKDIR_ENV)
    return Path(configured) if configured else var_dir() / "jobs"


def run_job(
    job: Mapping[str, Any],
    *,
    workroot: Path | None = None,
    policy: SandboxPolicy | None = None,
    notebooks: Path | None = None,
    on_progress: ProgressCallback | None = None,
    keep_workdir: bool | None = None,
    gpu_check: GpuMemoryCheck | None = None,
    gpu_health: GpuHealthCheck | None = None,
) -> dict[str, Any]:
    """Grade one job and return its report dict (see runner.schema).

    `on_progress(stage, **info)` hears "starting", "running" (cell=, cells=), "grading" and,
    last and always, "done" (status=). `gpu_check` and `gpu_health` replace the NVML checks a
    GPU node makes after and before each job (tests pass them with a fake NVML).
    """
    progress = on_progress or (lambda stage, **info: None)
    report = _run_job(
        job,
        workroot=workroot,
        policy=policy,
        notebooks=notebooks,
        progress=progress,
        keep_workdir=keep_workdir,
        gpu_check=gpu_check,
        gpu_health=gpu_health,
    )
    progress("done", status=report["status"])
    return report


def _run_job(
    job: Mapping[str, Any],
    *,
    workroot: Path | None,
    policy: SandboxPolicy | None,
    notebooks: Path | None,
    progress: ProgressCallback,
    keep_workdir: bool | None,
    gpu_check: GpuMemoryCheck | None,
    gpu_health: GpuHealthCheck | None,
) -> dict[str, Any]:
    try:
        parsed = parse_job(job)
    except JobInvalid as exc:
        return _malformed(job, exc)
    report = _Reporter(parsed)
    if not WORKER_HEALTH.ok:
        return report.error(WORKER_HEALTH.refusal())
    try:
        spec = load_lab_spec((notebooks or notebooks_root()) / parsed.lab)
    except LabSpecError as exc:
        return report.error(f"This worker cannot grade the lab '{parsed.lab}' ({exc}).")
    if parsed.device_class not in spec.device_classes:
        return report.error(
            f"The lab '{spec.slug}' is not graded on {parsed.device_class} workers "
            f"(only on {', '.join(spec.device_classes)})."
        )
    try:
        policy = policy or SandboxPolicy.from_env()
        policy.check()
    except SandboxUnavailable as exc:
        return report.error(
            f"The worker refused to run your notebook because its sandbox is unavailable: "
            f"{exc}. Nothing was run; an operator must fix this worker."
        )
    limits = sandbox_limits(parsed, spec)
    report.environment = describe_environment(
        sandbox_mode=policy.mode, sandbox_limits=policy.describe_limits(limits)
    )

    started = time.monotonic()
    try:
        nb = validate_notebook(
            json.dumps(parsed.notebook).encode(),
            max_bytes=spec.limits.max_notebook_bytes,
            max_cells=spec.limits.max_cells,
        )
        clean = sanitise_notebook(nb, starter=nbformat.read(spec.starter_path, as_version=4))
    except NotebookRejected as exc:
        return report.finish("rejected", str(exc))
    report.durations["validate"] = time.monotonic() - started

    jobdir = _make_jobdir(workroot or default_workroot(), parsed)
    keep = keep_workdir if keep_workdir is not None else os.environ.get(KEEP_ENV) == "1"
    gpus = gpu_indices(policy.gpu_devices)
    check = gpu_check if gpu_check is not None else (_gpu_check(gpus) if gpus else None)
    health = gpu_health if gpu_health is not None else (_gpu_health(gpus) if gpus else None)
    request = gpu_request(spec)

    def before(ticket: Ticket) -> HealthVerdict:
        # Runs once the job has its GPU slot; when it is alone there, nobody else may enter
        # until it returns (runner/gpu_share.py), so what it reads is the idle GPU.
        verdict = (
            health.before_job(alone=ticket.alone, timing=request.exclusive)
            if health
            else HealthVerdict()
        )
        if verdict.problem is None and check:
            check.before_job(alone=ticket.alone, idle_used=ticket.idle_used_bytes)
        return verdict

    ticket: Ticket | None = None
    try:
        # The last job to leave the GPU checks its memory (check.after_job), after every
        # sandbox of the job is gone and before any other job may enter.
        with GpuAdmission(gpus).slot(
            request, before=before, after=check.after_job if check else None
        ) as ticket:
            return _grade_in_slot(
                ticket, parsed, spec, clean, jobdir, policy, limits, progress, report
            )
    except Exception as exc:  # a bug of ours must still end in a report, not a lost job
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            raise  # Celery's backstop: the worker task turns it into a timeout report
        logger.exception("grading %s attempt %s failed", parsed.submission_id, parsed.attempt)
        return report.error(
            f"The worker hit an internal error while grading ({type(exc).__name__}: {exc}); "
            "this is not your code's fault."
        )
    finally:
        if not keep:
            shutil.rmtree(jobdir, ignore_errors=True)
        problem = ticket.after_result if ticket else None
        if problem:
            WORKER_HEALTH.fail(problem)


def gpu_request(spec: LabSpec) -> Request:
    """What a job of this lab asks of its GPU: alone (it times something; the default), or a
    shared slot with the memory the lab declares (runner/routing.py)."""
    requirements = spec.requirements
    if requirements.exclusive:
        return Request(exclusive=True)
    return Request(exclusive=False, memory_bytes=(requirements.job_gpu_memory_mib or 0) << 20)


def _grade_in_slot(
    ticket: Ticket,
    job: Job,
    spec: LabSpec,
    clean: Any,
    jobdir: Path,
    policy: SandboxPolicy,
    limits: ResourceLimits,
    progress: ProgressCallback,
    report: _Reporter,
) -> dict[str, Any]:
    verdict = ticket.before_result or HealthVerdict()
    if ticket.mode != "none":
        report.environment["gpu_slot"] = ticket.describe() | {"health_notes": list(verdict.notes)}
    if verdict.problem:
        WORKER_HEALTH.fail(verdict.problem)
    # Also when another process of this worker failed while this job waited for its slot.
    if not WORKER_HEALTH.ok:
        return report.error(WORKER_HEALTH.refusal())
    return _execute_and_grade(job, spec, clean, jobdir, policy, limits, progress, report)


def sandbox_limits(job: Job, spec: LabSpec) -> ResourceLimits:
    """Memory, processes and tmpfs size of each sandbox: the lab's, or less if the job asks."""

    def least(name: str) -> int:
        asked = getattr(job.limits, name)
        allowed = getattr(spec.limits, name)
        return min(asked, allowed) if asked else allowed

    return ResourceLimits(
        cpu_seconds=600,
        file_size_bytes=16 << 20,
        memory_bytes=least("memory_bytes"),
        max_processes=least("max_processes"),
        disk_bytes=least("disk_bytes"),
    )


_GPU_CHECKS: dict[tuple[int, ...], GpuMemoryCheck] = {}
_GPU_HEALTH: dict[tuple[int, ...], GpuHealthCheck] = {}


def _gpu_check(indices: tuple[int, ...]) -> GpuMemoryCheck:
    """One check per worker process, so the baseline is the one before its first job."""
    if indices not in _GPU_CHECKS:
        _GPU_CHECKS[indices] = GpuMemoryCheck(indices=indices)
    return _GPU_CHECKS[indices]


def _gpu_health(indices: tuple[int, ...]) -> GpuHealthCheck:
    """One per worker process: it keeps NVML open and its Xid event sets between jobs."""
    if indices not in _GPU_HEALTH:
        _GPU_HEALTH[indices] = GpuHealthCheck(indices=indices)
    return _GPU_HEALTH[indices]


def _execute_and_grade(
    job: Job,
    spec: LabSpec,
    clean: Any,
    jobdir: Path,
    policy: SandboxPolicy,
    limits: ResourceLimits,
    progress: ProgressCallback,
    report: _Reporter,
) -> dict[str, Any]:
    started = time.monotonic()
    run = run_notebook(
        clean,
        policy=policy,
        jobdir=jobdir / "notebook",
        log_path=jobdir / "logs" / "executor.log",
        # The job may ask for less than the lab allows, never more.
        cell_timeout_s=min(job.limits.cell_timeout_s, spec.limits.cell_timeout_s),
        total_timeout_s=min(job.limits.total_timeout_s, spec.limits.total_timeout_s),
        max_output_bytes=min(job.limits.max_output_bytes, spec.limits.max_output_bytes),
        max_notebook_bytes=spec.limits.max_notebook_bytes,
        on_progress=progress,
        limits=limits,
    )
    report.durations["execute"] = time.monotonic() - started
    report.executed_notebook = run.executed
    report.log.append(notebook_log(run.executed) or run.stderr_tail)
    if run.outcome.status != "ok":
        status = "timeout" if run.outcome.status == "timeout" else "error"
        return report.finish(status, run.outcome.message)

    progress("grading")
    started = time.monotonic()
    solution = extract_solution(clean)
    solution_path = jobdir / "candidate" / "solution.py"
    safeio.write_new(solution_path, solution.text.encode("utf-8"))
    grader = load_grader(spec.grader)
    result = grader.grade(
        spec=spec,
        solution_path=solution_path,
        seed=job.seed,
        device_class=job.device_class,
        workdir=jobdir,
        sandbox=policy,
        locate=solution.locate,
        limits=limits,
    )
    report.durations["grade"] = time.monotonic() - started
    if result.log_tail.strip():
        report.log.append("--- while grading ---\n" + result.log_tail)
    return report.finish(
        result.status,
        result.message,
        criteria=result.criteria,
        metrics=result.metrics,
        plots=result.plots,
        mismatches=result.mismatches,
        artifacts=result.artifacts,
    )


class _Reporter:
    """Collects the parts of a report as the pipeline goes, and builds it once at the end."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.environment: dict[str, Any] = describe_environment()
        self.durations: dict[str, float] = {}
        self.executed_notebook: dict[str, Any] | None = None
        self.log: list[str] = []

    def error(self, message: str) -> dict[str, Any]:
        return self.finish("error", message)

    def finish(self, status: str, message: str, **parts: Any) -> dict[str, Any]:
        log = "\n".join(part for part in self.log if part)
        return new_report(
            submission_id=self.job.submission_id,
            attempt=self.job.attempt,
            lab=self.job.lab,
            device_class=self.job.device_class,
            status=status,
            message=message,
            environment=self.environment,
            durations=self.durations,
            executed_notebook=self.executed_notebook,
            log_tail=log[-LOG_TAIL_BYTES:],
            **parts,
        )


def _malformed(job: Any, exc: Exception) -> dict[str, Any]:
    def text(key: str, default: str) -> str:
        value = job.get(key) if isinstance(job, Mapping) else None
        return value if isinstance(value, str) and value else default

    attempt = job.get("attempt") if isinstance(job, Mapping) else None
    return new_report(
        submission_id=text("submission_id", "unknown"),
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 0,
        lab=text("lab", "unknown"),
        device_class=text("device_class", "unknown"),
        status="error",
        message=f"The worker received a malformed job ({exc}); this is a bug on the web side.",
        environment=describe_environment(),
    )


def _make_jobdir(workroot: Path, job: Job) -> Path:
    """A fresh folder per run; sub-folders are each bound into exactly one sandbox."""
    workroot.mkdir(parents=True, exist_ok=True)
    jobdir = workroot / f"{job.submission_id}-a{job.attempt}-{secrets.token_hex(4)}"
    # Only the worker reads or writes here: sandboxes get copies of their inputs in a tmpfs.
    jobdir.mkdir(mode=0o700)
    for part in ("notebook", "candidate", "logs"):
        (jobdir / part).mkdir(mode=0o700)
    return jobdir


def notebook_log(executed: dict[str, Any] | None) -> str:
    """Stream output and tracebacks of the executed notebook, labelled by cell number."""
    if not executed:
        return ""
    parts = []
    for number, cell in enumerate(executed.get("cells", []), start=1):
        for output in cell.get("outputs", []) if isinstance(cell, dict) else []:
            if not isinstance(output, dict):
                continue
            if output.get("output_type") == "stream":
                text = output.get("text", "")
                text = "".join(text) if isinstance(text, list) else str(text)
            elif output.get("output_type") == "error":
                text = "\n".join(str(line) for line in output.get("traceback", []))
            else:
                continue
            parts.append(f"[cell {number}] {strip_ansi(text).rstrip()}")
    return "\n".join(parts)[-LOG_TAIL_BYTES:]
