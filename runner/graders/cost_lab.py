"""The `cost` lab's definition for its grader: the scenarios drawn from the secret seed, the
options read from lab.toml, the adapter the sandboxed child calls the learner's functions
through, and a cache of the grader's own best plans.

runner.graders.cost grades with them; the simulator, the planner and the dashboard arithmetic
are runner.cost's.
"""

from __future__ import annotations

import json
import math
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.cost.catalogue import Catalogue
from runner.cost.evaluate import Protocol
from runner.cost.shapes import ModelShape
from runner.cost.traffic import (
    Burst,
    LengthDistribution,
    Slo,
    Workload,
    diurnal_curve,
)
from runner.labspec import LabSpec

ADAPTER = "runner.graders.cost_lab:call_lab_function"
PLAN_FUNCTION = "plan_fleet"
REPORT_FUNCTION = "cost_report"
ROUTING = ("round_robin", "least_loaded")


@dataclass(frozen=True)
class ScenarioRange:
    """What the seed may draw for one scenario: the model and uniform ranges."""

    model: str
    peak_rps: tuple[float, float]
    prompt_mean: tuple[float, float]
    output_mean: tuple[float, float]
    tpot_p99_s: tuple[float, float] = (0.04, 0.07)


# Scenario 0 is the notebook example's neighbourhood; scenario 1 has about twice its traffic
# and longer prompts, so that a plan hard-coded for one workload fails the other. GPU workers
# add a 70B scenario (replicas over several GPUs), with a looser TPOT target: a step that
# also prefills a full budget of 2048 prompt tokens takes 2 x 70.55e9 x 2048 FLOPs, 86 ms on
# eight H100s at the catalogue's assumed efficiencies (0.5 of dense bf16, 0.85 across a
# tensor-parallel replica), so under the 8B scenarios' 40-70 ms no configuration in the
# catalogue meets it in bf16, nor in fp8 below ~53 ms. Until 2026-11-27 the 70B scenario drew
# 40-70 ms too, and most GPU-scale seeds had no feasible plan (the grader's own planner raised).
SCENARIOS = (
    ScenarioRange("llama-3.1-8b", (10_000, 13_000), (300, 900), (120, 300)),
    ScenarioRange("llama-3.1-8b", (15_000, 19_000), (900, 1600), (150, 350)),
    ScenarioRange("llama-3.1-70b", (10_000, 12_000), (300, 900), (120, 300), (0.11, 0.13)),
)


@dataclass(frozen=True)
class Options:
    scenarios: int
    protocol: Protocol
    burst_duration_s: tuple[float, float]
    load_timeout_s: float
    call_timeout_s: float
    dashboard_logs: int
    dashboard_windows: int
    dashboard_gpus: int

    @classmethod
    def from_spec(cls, spec: LabSpec, device_class: str) -> Options:
        options = dict(spec.options)
        scale = dict(options.get("scale", {}).get(device_class, {}))
        burst = scale.get("burst_duration_s", [3.0, 4.0])
        return cls(
            scenarios=min(int(scale.get("scenarios", 2)), len(SCENARIOS)),
            protocol=Protocol(
                warmup_s=float(scale.get("warmup_s", 0.5)),
                steady_s=float(scale.get("steady_s", 1.0)),
                recovery_s=float(scale.get("recovery_s", 0.5)),
                drain_s=float(scale.get("drain_s", 2.0)),
            ),
            burst_duration_s=(float(burst[0]), float(burst[1])),
            load_timeout_s=float(options.get("load_timeout_s", 60)),
            call_timeout_s=float(options.get("call_timeout_s", 60)),
            dashboard_logs=int(options.get("dashboard_logs", 3)),
            dashboard_windows=int(options.get("dashboard_windows", 6)),
            dashboard_gpus=int(options.get("dashboard_gpus", 4)),
        )


def draw_scenarios(
    rng: np.random.Generator,
    *,
    count: int,
    models: dict[str, ModelShape],
    burst_duration_s: tuple[float, float],
) -> list[Workload]:
    """`count` workloads from the seed: traffic from 10K requests/s up, lengths, SLOs, the
    burst, the daily curve and the precisions the workload's quality bar accepts."""
    workloads = []
    for number, scenario in enumerate(SCENARIOS[:count]):

        def pick(bounds: tuple[float, float], step: float) -> float:
            return round(round(float(rng.uniform(*bounds)) / step) * step, 6)

        workloads.append(
            Workload(
                name=f"scenario-{number + 1}",
                model=models[scenario.model],
                peak_rps=pick(scenario.peak_rps, 100),
                daily_curve=diurnal_curve(
                    trough=pick((0.15, 0.4), 0.01),
                    peak_hour=int(rng.integers(10, 22)),
                    sharpness=pick((1.0, 2.0), 0.1),
                ),
                prompt_tokens=LengthDistribution(
                    mean=pick(scenario.prompt_mean, 10), sigma=pick((0.4, 0.8), 0.05), max=4096
                ),
                output_tokens=LengthDistribution(
                    mean=pick(scenario.output_mean, 10), sigma=pick((0.4, 0.8), 0.05), max=1024
                ),
                slo=Slo(
                    ttft_p99_s=pick((0.5, 1.5), 0.05), tpot_p99_s=pick(scenario.tpot_p99_s, 0.005)
                ),
                burst=burst(rng, pick, burst_duration_s),
                precisions=("bf16", "fp8") if rng.random() < 0.5 else ("bf16",),
                routing=ROUTING,
            )
        )
    return workloads


def burst(
    rng: np.random.Generator,
    pick: Callable[[tuple[float, float], float], float],
    duration_s: tuple[float, float],
) -> Burst:
    """A burst of 1.7-2x the peak, with a TTFT target of 30-45% of its duration. A fleet with
    h times the peak's capacity and no room to grow builds a backlog that makes the last
    arrivals of the burst wait about (multiplier / h - 1) x duration: over 0.5 x duration
    for h = 1.1, so a fleet sized for the peak alone fails it, and one that keeps
    multiplier / (1 + target / duration) of the peak's capacity (about 1.3-1.5x) passes."""
    duration = pick(duration_s, 0.5)
    return Burst(
        multiplier=pick((1.7, 2.0), 0.05),
        duration_s=duration,
        ttft_p99_s=round(round(duration * float(rng.uniform(0.3, 0.45)) / 0.25) * 0.25, 6),
    )


# -- the adapter: runs in the sandboxed child, imported before the learner's code ----------


def call_lab_function(function: Callable[..., Any], request: dict[str, Any]) -> Any:
    """Call `plan_fleet` (the served function) or the solution's `cost_report`, as the
    request's "call" says, with its "args"; numpy numbers and arrays in the answer become
    plain numbers and lists (the trusted side checks everything it gets)."""
    name = request.get("call")
    args = request.get("args", [])
    if name == PLAN_FUNCTION:
        target = function
    elif name == REPORT_FUNCTION:
        solution = sys.modules.get("solution")
        target = getattr(solution, REPORT_FUNCTION, None)
        if not callable(target):
            raise NameError(
                f"your solution cells define no function named '{REPORT_FUNCTION}' (exercise 2)"
            )
    else:
        raise ValueError(f"unknown call {name!r}")
    return _plain(target(*args))


def _plain(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise ValueError("the answer is nested too deeply")
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return _plain(value.tolist(), depth + 1)
    return value


# -- the grader's own best plans, remembered per worker process -----------------------------

_BEST: OrderedDict[str, dict[str, Any]] = OrderedDict()
_BEST_KEPT = 16


def cached_best(
    workload: Workload,
    catalogue: Catalogue,
    protocol: Protocol,
    seed_key: str,
    compute: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """The grader's best plan for this scenario, computed once per worker process: a regrade
    or a second submission on the same seed does not pay for the planner's simulations again.
    Keyed by everything that decides it, so a changed catalogue or protocol computes anew."""
    key = json.dumps(
        [workload.to_plain(), catalogue.to_plain(), protocol.__dict__, seed_key], sort_keys=True
    )
    if key in _BEST:
        _BEST.move_to_end(key)
        return _BEST[key]
    result = compute()
    _BEST[key] = result
    while len(_BEST) > _BEST_KEPT:
        _BEST.popitem(last=False)
    return result


def ratio(value: float, bar: float) -> float:
    return value / bar if bar > 0 and math.isfinite(value) else math.inf
