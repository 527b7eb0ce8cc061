"""Grader for the `cost` lab (Phase 4): a learner's fleet plans, run through the trusted fleet
simulator, and their inference cost dashboard, checked against the grader's own arithmetic.

Trust boundary: this module runs in the worker. The learner's `plan_fleet` and `cost_report`
run only in a sandboxed child (runner.harness.serve, through call_json and the adapter in
runner.graders.cost_lab) that never sees the seed. Scenarios, traffic and logs come from the
seed; a returned plan is data, checked field by field against the grader's own catalogue (a
plan that brings its own prices or specs is refused); every simulation, the grader's own best
plan and every comparison happen here.

Criteria: `valid` (every scenario got a plan that can run), `slo` (each plan's worst p99 TTFT
or TPOT at peak over its target), `burst` (p99 TTFT through the burst over its target),
`cost` (each plan's cost per day over the grader's best plan's), `dashboard` (fields of the
cost report that differ from the grader's on fresh logs). The written defence is not graded
here: it stays in the executed notebook, for the instructor's rubric.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runner.cost.catalogue import Catalogue, load_catalogue, node_entry
from runner.cost.dashboard import alert_threshold, compare_reports, cost_report, synthetic_log
from runner.cost.evaluate import Traffic, draw_traffic, evaluate_plan
from runner.cost.fleet import FleetPlan, PlanError, parse_plan, replicas_by_hour
from runner.cost.optimise import best_plan
from runner.cost.plots import cost_latency_svg, day_svg
from runner.cost.shapes import load_models
from runner.cost.traffic import Workload
from runner.graders.base import GraderBroken, GradeResult, evaluate_criteria, verdict
from runner.graders.children import GradingChildren, grading_limits
from runner.graders.cost_lab import (
    ADAPTER,
    PLAN_FUNCTION,
    REPORT_FUNCTION,
    Options,
    cached_best,
    draw_scenarios,
    ratio,
)
from runner.graders.reporting import svg_plot
from runner.harness.client import HarnessFailure, ServedFunction
from runner.labspec import LabSpec
from runner.measure.node_peaks import node_peaks
from runner.sandbox import ResourceLimits, SandboxPolicy

PLAN_METRICS = ("worst_slo_ratio", "worst_burst_ratio", "worst_cost_ratio")
MAX_ANSWER_CHARS = 4000


def grade(
    *,
    spec: LabSpec,
    solution_path: Path,
    seed: str,
    device_class: str,
    workdir: Path,
    sandbox: SandboxPolicy,
    locate: Callable[[int], tuple[int, int] | None] | None = None,
    limits: ResourceLimits | None = None,
) -> GradeResult:
    options = Options.from_spec(spec, device_class)
    scenario_seed, traffic_seed, dashboard_seed = np.random.SeedSequence(int(seed, 16)).spawn(3)
    catalogue, catalogue_note = grading_catalogue(device_class)
    workloads = draw_scenarios(
        np.random.default_rng(scenario_seed),
        count=options.scenarios,
        models=load_models(),
        burst_duration_s=options.burst_duration_s,
    )
    children = GradingChildren(
        spec=spec,
        device_class=device_class,
        solution_path=solution_path,
        workdir=workdir,
        sandbox=sandbox,
        locate=locate,
        limits=grading_limits(limits, cpu_seconds=600, file_size_bytes=16 << 20),
        device="cpu",  # a plan is arithmetic: the learner's code never needs the GPU
    )
    with children:
        child = children.learner(adapter=ADAPTER)
        run = _Run(spec=spec, device_class=device_class, options=options, child=child)
        run.metrics["catalogue"] = catalogue_note

        def steps() -> GradeResult:
            streams = traffic_seed.spawn(len(workloads))
            for workload, stream in zip(workloads, streams, strict=True):
                run.grade_scenario(workload, catalogue, stream, seed)
            run.check_dashboard(np.random.default_rng(dashboard_seed), catalogue)
            return run.finish()

        return children.result_of(steps, metrics=run.metrics, timeout_s=options.load_timeout_s)


def grading_catalogue(device_class: str) -> tuple[Catalogue, dict[str, Any]]:
    """The catalogue.toml entries, and on a GPU worker one more, "this-node", from the peaks
    this worker measured on its own GPU (runner.measure.node_peaks)."""
    catalogue = load_catalogue()
    note: dict[str, Any] = {"gpus": sorted(catalogue.gpus)}
    if device_class != "gpu":
        return catalogue, {**note, "this_node": "cpu worker: no GPU measured"}
    peaks, why = node_peaks("cuda")
    entry = node_entry(peaks, catalogue) if peaks is not None else None
    if entry is None:
        reason = why or "this GPU model has no catalogue entry to take its memory and price from"
        return catalogue, {**note, "this_node": f"not added: {reason}"}
    catalogue = catalogue.with_gpu(entry)
    return catalogue, {**note, "gpus": sorted(catalogue.gpus), "this_node": entry.to_plain()}


class _Run:
    """The state of one grading run, so each step reads as one short method."""

    def __init__(
        self, *, spec: LabSpec, device_class: str, options: Options, child: ServedFunction
    ) -> None:
        self.spec = spec
        self.device_class = device_class
        self.options = options
        self.child = child
        self.metrics: dict[str, Any] = {"scenarios": []}
        self.plots: list[dict[str, str]] = []
        self.dashboard_note: str | None = None

    def ask(self, call: str, args: list[Any], doing: str) -> tuple[Any, str | None]:
        """(answer, None), or (None, why there is none) when the function raised or returned
        something that is not JSON data. Hangs and cheats propagate (HarnessFailure)."""
        try:
            reply = self.child.call_json(
                {"call": call, "args": args}, timeout_s=self.options.call_timeout_s, doing=doing
            )
        except HarnessFailure as exc:
            if exc.kind != "error":
                raise
            return None, exc.message
        if reply.returned_instead is not None:
            return None, f"it returned {reply.returned_instead}, which is not plain JSON data"
        return reply.answer, None

    def grade_scenario(
        self, workload: Workload, catalogue: Catalogue, stream: np.random.SeedSequence, seed: str
    ) -> None:
        record: dict[str, Any] = {"workload": workload.to_plain()}
        self.metrics["scenarios"].append(record)
        answer, problem = self.ask(
            PLAN_FUNCTION,
            [workload.to_plain(), catalogue.to_plain()],
            f"planning {workload.name} ({workload.peak_rps:g} requests/s of {workload.model.name})",
        )
        record["answer"] = _shown(answer)
        plan: FleetPlan | None = None
        if problem is None:
            try:
                plan = parse_plan(answer, workload=workload, catalogue=catalogue)
            except PlanError as exc:
                problem = str(exc)
        if plan is None:
            record["problem"] = f"{workload.name}: {problem}"
            return
        traffic = draw_traffic(workload, self.options.protocol, np.random.default_rng(stream))
        result = self.evaluate(plan, workload, catalogue, traffic)
        key = hashlib.sha256(f"{seed}:{workload.name}".encode()).hexdigest()
        bar = cached_best(
            workload,
            catalogue,
            self.options.protocol,
            key,
            lambda: best_plan(
                workload,
                catalogue,
                check=lambda candidate: self.evaluate(candidate, workload, catalogue, traffic),
            ),
        )
        best = bar["best"]
        record.update(
            result=result,
            best=best,
            planner_checks=bar["checks"],
            cost_ratio=ratio(result["cost_per_day"], best["cost_per_day"]),
        )
        self.plot_scenario(workload, plan, result, bar)

    def evaluate(
        self, plan: FleetPlan, workload: Workload, catalogue: Catalogue, traffic: Traffic
    ) -> dict[str, Any]:
        try:
            return evaluate_plan(
                plan,
                workload=workload,
                catalogue=catalogue,
                protocol=self.options.protocol,
                traffic=traffic,
            )
        except (ValueError, ArithmeticError) as exc:  # a plan that passed parse_plan: ours
            raise GraderBroken(f"the simulator failed on a valid plan ({exc})") from None

    def plot_scenario(
        self,
        workload: Workload,
        plan: FleetPlan,
        result: dict[str, Any],
        bar: dict[str, Any],
    ) -> None:
        def point(entry: dict[str, Any], label: str) -> tuple[float, float, str] | None:
            tpot = (entry.get("steady") or {}).get("tpot_p99_s")
            return (tpot * 1000, entry["cost_per_day"], label) if tpot else None

        tried = [
            point(t, f"{t['plan']['gpu']} {t['plan']['precision']} x{t['plan']['replicas']}")
            for t in bar["tried"]
        ]
        yours = point(result, "your plan")
        points = [p for p in tried if p]
        if points:
            self.plots.append(
                svg_plot(
                    f"cost-latency-{workload.name}",
                    cost_latency_svg(
                        points=points,
                        highlight=[yours] if yours else [],
                        title=f"{workload.name}: the grader's plans and yours (steady peak)",
                    ),
                )
            )
        if len(self.plots) <= 2:  # one day plot is enough to read
            hourly = replicas_by_hour(plan, workload)
            load = [
                workload.rate_at_hour(h) / (n * plan.target_rps_per_replica)
                for h, n in enumerate(hourly)
            ]
            self.plots.append(
                svg_plot(
                    f"day-{workload.name}",
                    day_svg(load=load, replicas=hourly, title=f"{workload.name}: your plan's day"),
                )
            )

    def check_dashboard(self, rng: np.random.Generator, catalogue: Catalogue) -> None:
        mismatches = 0
        logs = []
        price = catalogue.gpu("H100-SXM-80GB").price_per_hour
        for number in range(self.options.dashboard_logs):
            log = synthetic_log(
                rng, gpus=self.options.dashboard_gpus, windows=self.options.dashboard_windows
            )
            threshold = alert_threshold(log, price)
            expected = cost_report(log, price, threshold)  # before the learner sees the log
            answer, problem = self.ask(
                REPORT_FUNCTION, [log, price, threshold], f"reporting on fleet log {number + 1}"
            )
            if problem is not None:
                self.dashboard_note = problem
                self.metrics["dashboard"] = {"problem": problem}
                return
            problems = compare_reports(expected, answer)
            mismatches += len(problems)
            logs.append({"log": number + 1, "expected": expected, "mismatches": problems[:10]})
        self.metrics["dashboard"] = {"logs": logs, "mismatched_fields": mismatches}

    def finish(self) -> GradeResult:
        scenarios = self.metrics["scenarios"]
        problems = [s["problem"] for s in scenarios if "problem" in s]
        graded = [s for s in scenarios if "result" in s]
        measured: dict[str, float | None] = {"invalid_plans": float(len(problems))}
        every = not problems and graded
        measured["worst_slo_ratio"] = (
            max(s["result"]["slo_ratio"] for s in graded) if every else None
        )
        measured["worst_burst_ratio"] = (
            max(s["result"]["burst_ratio"] for s in graded) if every else None
        )
        measured["worst_cost_ratio"] = max(s["cost_ratio"] for s in graded) if every else None
        dashboard = self.metrics.get("dashboard", {})
        measured["dashboard_mismatches"] = (
            float(dashboard["mismatched_fields"]) if "mismatched_fields" in dashboard else None
        )
        self.metrics["measured"] = {
            k: (None if v is None else (v if math.isfinite(v) else 1e9))
            for k, v in measured.items()
        }
        not_planned = "not every scenario got a valid plan: " + "; ".join(problems)
        notes = {metric: not_planned for metric in PLAN_METRICS}
        notes["dashboard_mismatches"] = f"{REPORT_FUNCTION}() gave no report: {self.dashboard_note}"
        criteria = evaluate_criteria(
            spec=self.spec, device_class=self.device_class, measured=measured, notes=notes
        )
        headline = ""
        if every:
            ratios = ", ".join(f"{s['cost_ratio']:.2f}x" for s in graded)
            headline = f"Your plans cost {ratios} the grader's best."
        status, message = verdict(criteria, headline=headline)
        if problems and status == "failed":
            message += f" {problems[0]}"
        return GradeResult(
            status=status,
            message=message,
            criteria=criteria,
            metrics=self.metrics,
            plots=self.plots,
            log_tail=self.child.log_tail(),
        )


def _shown(answer: Any) -> Any:
    """The learner's answer as the report keeps it: as is when small, else a note."""
    text = json.dumps(answer)
    return answer if len(text) <= MAX_ANSWER_CHARS else f"(a {len(text)}-character answer)"
