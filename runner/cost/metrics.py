"""What a fleet simulation measured, as serving benchmarks report it: percentiles of TTFT,
TPOT and end-to-end latency over raw per-request samples (vLLM's definitions: TPOT =
(E2EL - TTFT) / (output tokens - 1), for requests of more than one output token), utilisation,
throughput, cost per 1K output tokens and requests per dollar.

A request that never got its first token (still queued when the simulation stopped, or too
large for any replica) has infinite latency: it counts in every percentile, so a fleet that
leaves more than 1% of requests behind has an infinite p99.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from runner.cost.simulate import FleetRun

_HUGE = 1e300  # stands for infinity inside np.percentile, whose interpolation makes inf - inf


def percentile(values: np.ndarray, q: float) -> float:
    """np.percentile (linear interpolation, as vLLM's benchmark) where inf stays inf."""
    if len(values) == 0:
        return math.nan
    result = float(np.percentile(np.where(np.isinf(values), _HUGE, values), q))
    return math.inf if result >= _HUGE / 2 else result


def latency_summary(
    run: FleetRun,
    *,
    arrived_from: float,
    arrived_until: float,
    tokens_until: float | None = None,
) -> dict[str, Any]:
    """Latency percentiles of the requests that arrived in [arrived_from, arrived_until).

    With `tokens_until`, TPOT counts only the tokens each request produced by that time (a
    request with fewer than two by then has none): the per-token latency of a window, even
    for long requests that finish after it, and unmixed with what came later (a burst)."""
    chosen = (run.arrival >= arrived_from) & (run.arrival < arrived_until)
    ttft = run.first_token[chosen] - run.arrival[chosen]
    e2el = run.finish[chosen] - run.arrival[chosen]
    if tokens_until is None:
        output = run.output[chosen]
        multi = output > 1
        with np.errstate(invalid="ignore"):
            tpot = (e2el[multi] - ttft[multi]) / (output[multi] - 1)
        tpot = np.where(np.isnan(tpot), math.inf, tpot)  # inf - inf: never finished
    else:
        tpot = tpot_until(run, chosen, tokens_until)
    completed = np.isfinite(e2el)
    summary: dict[str, Any] = {
        "requests": int(chosen.sum()),
        "completed": int(completed.sum()),
        "completed_fraction": float(completed.mean()) if len(e2el) else math.nan,
        "rejected": int(run.rejected[chosen].sum()),
    }
    for name, values in (("ttft", ttft), ("tpot", tpot), ("e2el", e2el)):
        for q in (50, 99):
            summary[f"{name}_p{q}_s"] = percentile(values, q)
        finite = values[np.isfinite(values)]
        summary[f"{name}_mean_s"] = float(finite.mean()) if len(finite) else math.nan
    return summary


def tpot_until(run: FleetRun, chosen: np.ndarray, until: float) -> np.ndarray:
    """TPOT of the chosen requests over the tokens they produced by `until`: (time of the last
    of them - time of the first) / (their number - 1), for requests with at least two."""
    admitted = chosen & (run.admit_step >= 0)
    replica = run.replica[admitted]
    start = run.admit_step[admitted]
    produced = run.segments.steps_done_by(replica, until) - start
    tokens = np.minimum(run.output[admitted], produced)
    several = tokens >= 2
    replica, start, tokens = replica[several], start[several], tokens[several]
    last = run.segments.step_end(replica, start + tokens - 1)
    first = run.first_token[admitted][several]
    return (last - first) / (tokens - 1)


def utilisation_summary(run: FleetRun, *, start: float, end: float) -> dict[str, Any]:
    """Busy fraction (time a replica is running a step), mean batch and KV-free output
    throughput over [start, end), from the per-bucket busy time and per-request finishes."""
    first, last = int(start / run.bucket_s), int(math.ceil(end / run.bucket_s))
    busy = run.busy_by_bucket[first:last].sum() if len(run.busy_by_bucket) else 0.0
    seconds = (last - first) * run.bucket_s * run.replicas
    finished = (run.finish >= start) & (run.finish < end)
    return {
        "busy_fraction": float(busy / seconds) if seconds else math.nan,
        "mean_batch": run.sequence_s / run.busy_s if run.busy_s else 0.0,
        "steps": run.steps,
        "events": run.events,
        "output_tokens_per_s": float(run.output[finished].sum() / (end - start)),
    }


def cost_summary(
    *,
    gpu_hours: float,
    price_per_gpu_hour: float,
    requests: float,
    output_tokens: float,
) -> dict[str, float]:
    """Dollars, dollars per 1K output tokens and requests per dollar for served traffic."""
    dollars = gpu_hours * price_per_gpu_hour
    return {
        "gpu_hours": gpu_hours,
        "cost": dollars,
        "cost_per_1k_tokens": dollars / (output_tokens / 1000) if output_tokens else math.inf,
        "requests_per_dollar": requests / dollars if dollars else math.inf,
    }
