"""Judging a fleet plan on a workload: simulate its peak and a burst, price its day.

The traffic has four phases, all at the workload's peak rate except the burst:

    warm-up | steady (SLOs measured here) | burst (multiplier x peak) | recovery

- SLO at peak: p99 TTFT of the requests that arrive in the steady phase, and p99 TPOT over
  the tokens they produce before the burst starts, each divided by its target (<= 1 meets it),
  and whether the fleet keeps up: it must start at least 97% as many requests as arrive in
  the steady phase, or the ratio is at least KEEP_UP / started per arrival (> 1). A short
  simulation of a fleet over capacity can show a fine TTFT while its queue grows, but the
  peak lasts hours;
- burst: p99 TTFT of the requests that arrive during the burst and the recovery, divided by
  the burst's TTFT target;
- cost: the plan's autoscaled day (runner.cost.fleet.daily_cost).

The same seed gives every plan the same requests, so two plans are compared on identical
traffic. The simulation stops once every request has its first token, or `drain_s` after the
last arrival: a request still without its first token by then has an infinite TTFT. Many
requests are still generating when it stops, so end-to-end latencies are not judged here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.cost.catalogue import Catalogue
from runner.cost.fleet import FleetPlan, daily_cost
from runner.cost.metrics import latency_summary, utilisation_summary
from runner.cost.roofline import Deployment
from runner.cost.simulate import EngineModel, RunningAtStart, simulate_fleet
from runner.cost.traffic import Workload, arrival_times

# The fraction of the steady phase's arrivals a fleet must start within it. Poisson noise on
# the 15K+ arrivals of a CPU-scale steady phase is under 1%; a fleet at 3% over capacity
# falls behind by more than that.
KEEP_UP = 0.97


@dataclass(frozen=True)
class Protocol:
    warmup_s: float
    steady_s: float
    recovery_s: float
    drain_s: float = 5.0

    def phases(self, workload: Workload) -> dict[str, tuple[float, float]]:
        """Each phase's (start, end) in seconds."""
        steady = self.warmup_s + self.steady_s
        burst = steady + workload.burst.duration_s
        return {
            "warmup": (0.0, self.warmup_s),
            "steady": (self.warmup_s, steady),
            "burst": (steady, burst),
            "recovery": (burst, burst + self.recovery_s),
        }


@dataclass(frozen=True)
class Traffic:
    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    # Seeds the warm start (warm_start): drawn with the traffic, so that every plan
    # evaluated on it starts from the same randomness.
    warm_seed: int

    def __len__(self) -> int:
        return len(self.arrival)


def draw_traffic(workload: Workload, protocol: Protocol, rng: np.random.Generator) -> Traffic:
    peak, burst = workload.peak_rps, workload.burst
    arrival = arrival_times(
        rng,
        [
            (protocol.warmup_s + protocol.steady_s, peak),
            (burst.duration_s, peak * burst.multiplier),
            (protocol.recovery_s, peak),
        ],
    )
    return Traffic(
        arrival=arrival,
        prompt=workload.prompt_tokens.sample(rng, len(arrival)),
        output=workload.output_tokens.sample(rng, len(arrival)),
        warm_seed=int(rng.integers(0, 2**63 - 1)),
    )


def warm_start(
    deployment: Deployment, plan: FleetPlan, workload: Workload, traffic: Traffic
) -> RunningAtStart:
    """Requests already running at time 0, as many per replica as the roofline's steady state
    holds at the peak's load per replica (runner.cost.roofline.Deployment.batch_for_rate), so
    that a few seconds of warm-up reach steady state where an empty fleet would need about
    a request's lifetime (E2EL: often 10 s and more) to fill up.

    A request found running is length-biased (a long one is running for longer), and is
    uniformly far through its output: lengths are drawn from the workload, kept with
    probability proportional to length, and given a uniform number of tokens still to go.
    The randomness is the traffic's own (`traffic.warm_seed`), the same for every plan."""
    mean_prompt, mean_output = workload.prompt_tokens.mean, workload.output_tokens.mean
    batch = deployment.batch_for_rate(
        workload.peak_rps / plan.replicas,
        max_batch=plan.max_batch,
        mean_prompt=mean_prompt,
        mean_output=mean_output,
    )
    per_replica = int(batch)
    count = per_replica * plan.replicas
    pool = len(traffic)
    if count == 0 or pool == 0:
        empty = np.empty(0, dtype=np.int64)
        return RunningAtStart(empty, empty, empty, empty)
    rng = np.random.default_rng(traffic.warm_seed)
    # Length-biased resampling from the traffic's own lengths (with replacement).
    cumulative = np.cumsum(traffic.output / traffic.output.sum())
    picked = np.minimum(np.searchsorted(cumulative, rng.random(count)), pool - 1)
    output = traffic.output[picked]
    prompt = traffic.prompt[rng.integers(0, pool, count)]
    remaining = 1 + np.minimum((rng.random(count) * output).astype(np.int64), output - 1)
    replica = np.repeat(np.arange(plan.replicas), per_replica)
    return RunningAtStart(replica=replica, prompt=prompt, output=output, remaining=remaining)


def evaluate_plan(
    plan: FleetPlan,
    *,
    workload: Workload,
    catalogue: Catalogue,
    protocol: Protocol,
    traffic: Traffic,
) -> dict[str, Any]:
    """The plan's SLO, burst and cost figures (JSON data; ratios <= 1 meet their targets)."""
    phases = protocol.phases(workload)
    end = phases["recovery"][1]
    deployment = plan.deployment(workload, catalogue)
    engine = EngineModel.from_deployment(deployment, max_batch=plan.max_batch)
    run = simulate_fleet(
        traffic.arrival,
        traffic.prompt,
        traffic.output,
        engine=engine,
        replicas=plan.replicas,
        routing=plan.routing,
        stop_at=end + protocol.drain_s,
        stop_when_all_started=True,
        running_at_start=warm_start(deployment, plan, workload, traffic),
    )
    steady = latency_summary(
        run,
        arrived_from=phases["steady"][0],
        arrived_until=phases["steady"][1],
        tokens_until=phases["steady"][1],
    )
    burst = latency_summary(run, arrived_from=phases["burst"][0], arrived_until=end)
    slo = workload.slo
    keeps_up = started_per_arrival(run, *phases["steady"])
    behind = KEEP_UP / keeps_up if keeps_up > 0 else math.inf  # > 1: falling behind
    slo_ratio = max(
        steady["ttft_p99_s"] / slo.ttft_p99_s,
        steady["tpot_p99_s"] / slo.tpot_p99_s,
        behind if behind > 1 else 0.0,
    )
    burst_ratio = burst["ttft_p99_s"] / workload.burst.ttft_p99_s
    day = daily_cost(plan, workload, catalogue)
    return {
        "plan": plan.to_plain(),
        "slo_ratio": _finite(slo_ratio),
        "burst_ratio": _finite(burst_ratio),
        "cost_per_day": day["cost"],
        "day": day,
        "steady": _rounded({**steady, "started_per_arrival": keeps_up}),
        "burst": _rounded(burst),
        "utilisation": _rounded(
            utilisation_summary(run, start=phases["steady"][0], end=phases["steady"][1])
        ),
        "kv_budget_tokens": engine.kv_budget_tokens,
        "requests_simulated": len(traffic),
        "events": run.events,
    }


def started_per_arrival(run: Any, start: float, end: float) -> float:
    """Requests the fleet started (gave a first token) in [start, end) per request that
    arrived then. About 1 for a fleet that keeps up; a fleet over capacity falls behind, its
    queue growing by the difference, and would miss any TTFT target if the peak lasted."""
    arrived = np.count_nonzero((run.arrival >= start) & (run.arrival < end))
    started = np.count_nonzero((run.first_token >= start) & (run.first_token < end))
    return started / arrived if arrived else math.inf


def meets(result: dict[str, Any]) -> bool:
    return result["slo_ratio"] <= 1 and result["burst_ratio"] <= 1


def _finite(value: float) -> float:
    """JSON has no infinity: a ratio that is infinite (requests never served) becomes 1e9."""
    return 1e9 if not math.isfinite(value) else float(value)


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    """Floats to 6 decimals, infinities and NaN to None (JSON has neither)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, float):
            value = round(value, 6) if math.isfinite(value) else None
        out[key] = value
    return out
