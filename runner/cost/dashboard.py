"""The inference cost dashboard's arithmetic: from a fleet's telemetry log (the runner's own
pynvml samples, runner/measure/telemetry.py, and a request log), what the fleet cost, what it
served, how long its GPUs sat idle, and which windows fell below a cost-efficiency threshold.

A log is plain data:

    {"start_s": 0.0, "end_s": 600.0,        # the window billed, [start, end)
     "interval_s": 1.0,                     # one GPU sample stands for this many seconds
     "idle_below_pct": 5,                   # a sample under this GPU utilisation is idle
     "window_s": 60.0,                      # alert windows: [start + k w, start + (k+1) w)
     "gpu_samples": [{"t_s", "index", "gpu_utilization_pct" (None: NVML could not read it),
                      "memory_utilization_pct", "power_w", "sm_clock_mhz"}, ...],
     "requests": [{"arrival_s", "first_token_s", "finish_s" (None: not finished),
                   "prompt_tokens", "output_tokens", "status": "ok" | "error"}, ...]}

`cost_report` is the reference computation the lab grades a learner's against; `synthetic_log`
draws fresh logs from a seed, with the traps a real log has (unreadable samples, failed and
unfinished requests, requests finishing after the window, an idle lull).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

REPORT_FIELDS = (
    "gpu_hours",
    "cost",
    "requests",
    "output_tokens",
    "cost_per_1k_tokens",
    "requests_per_dollar",
    "idle_gpu_hours",
    "idle_fraction",
    "alert_windows",
    "alert",
)


def cost_report(
    log: Mapping[str, Any], price_per_gpu_hour: float, min_requests_per_dollar: float
) -> dict[str, Any]:
    """The fleet's cost and efficiency over the log's window.

    - GPUs: the distinct `index` values of the samples, each billed for the whole window;
      gpu_hours = GPUs x (end - start) / 3600; cost = gpu_hours x price.
    - Served: requests with status "ok" whose finish_s is in [start, end); requests and
      output_tokens (generated tokens only) count them; cost_per_1k_tokens = cost /
      (output_tokens / 1000) (None without tokens); requests_per_dollar = requests / cost.
    - Idle: samples with a utilisation reading under idle_below_pct; each stands for
      interval_s of one GPU: idle_gpu_hours = idle samples x interval_s / 3600;
      idle_fraction = idle samples / samples with a reading (unreadable ones count in neither).
    - Alerts: each whole window of window_s from start; its requests per dollar (requests it
      served / (GPUs x window_s / 3600 x price)) under min_requests_per_dollar puts the
      window's start in alert_windows; alert is whether there is any.
    """
    start, end = float(log["start_s"]), float(log["end_s"])
    samples, requests = log["gpu_samples"], log["requests"]
    gpus = len({sample["index"] for sample in samples})
    gpu_hours = gpus * (end - start) / 3600
    cost = gpu_hours * price_per_gpu_hour
    served = [
        r
        for r in requests
        if r["status"] == "ok" and r["finish_s"] is not None and start <= r["finish_s"] < end
    ]
    tokens = sum(int(r["output_tokens"]) for r in served)
    readable = [s for s in samples if s["gpu_utilization_pct"] is not None]
    idle = sum(1 for s in readable if s["gpu_utilization_pct"] < log["idle_below_pct"])
    alerts = [
        start + k * float(log["window_s"])
        for k, value in enumerate(window_requests_per_dollar(log, price_per_gpu_hour, served))
        if value < min_requests_per_dollar
    ]
    return {
        "gpu_hours": gpu_hours,
        "cost": cost,
        "requests": len(served),
        "output_tokens": tokens,
        "cost_per_1k_tokens": cost / (tokens / 1000) if tokens else None,
        "requests_per_dollar": len(served) / cost if cost else None,
        "idle_gpu_hours": idle * float(log["interval_s"]) / 3600,
        "idle_fraction": idle / len(readable) if readable else 0.0,
        "alert_windows": alerts,
        "alert": bool(alerts),
    }


def window_requests_per_dollar(
    log: Mapping[str, Any], price_per_gpu_hour: float, served: list[Mapping[str, Any]]
) -> list[float]:
    """Requests per dollar of each whole window of window_s from the log's start: the served
    requests that finished in it over what its GPUs cost in it."""
    start, window = float(log["start_s"]), float(log["window_s"])
    windows = int((float(log["end_s"]) - start) // window)
    counts = [0] * windows
    for r in served:
        k = int((r["finish_s"] - start) // window)
        if k < windows:
            counts[k] += 1
    gpus = len({sample["index"] for sample in log["gpu_samples"]})
    window_cost = gpus * window / 3600 * price_per_gpu_hour
    return [count / window_cost for count in counts]


def compare_reports(expected: Mapping[str, Any], got: Any, *, rtol: float = 1e-6) -> list[str]:
    """Every field of `got` that differs from `expected`, as a sentence each: numbers within
    rtol (relative) or 1e-9 (absolute), counts and lists exactly, the alert flag exactly."""
    if not isinstance(got, Mapping):
        return [f"the report is a {type(got).__name__}, not a dict with {', '.join(REPORT_FIELDS)}"]
    problems = []
    for name in REPORT_FIELDS:
        if name not in got:
            problems.append(f"{name}: missing")
            continue
        want, have = expected[name], got[name]
        if not _same(want, have, rtol):
            problems.append(f"{name}: expected {_short(want)}, got {_short(have)}")
    return problems


def _same(want: Any, have: Any, rtol: float) -> bool:
    if want is None or isinstance(want, bool):
        return have is want or have == want and isinstance(have, bool)
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(_same(w, h, rtol) for w, h in zip(want, have, strict=True))
        )
    if isinstance(have, bool) or not isinstance(have, int | float) or not math.isfinite(have):
        return False
    return abs(have - want) <= max(1e-9, rtol * abs(want))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def synthetic_log(
    rng: np.random.Generator,
    *,
    gpus: int,
    windows: int,
    window_s: float = 60.0,
    interval_s: float = 1.0,
    rate_per_gpu: float = 2.0,
) -> dict[str, Any]:
    """A fresh fleet log: `gpus` GPUs sampled every interval_s for `windows` windows, with a
    daily-like load, a lull of one or two windows with almost no traffic (GPUs idle), about
    1% unreadable utilisation samples, 3% failed requests and requests still running at the
    end."""
    start = float(rng.integers(0, 50_000)) * interval_s
    duration = windows * window_s
    end = start + duration
    lull = int(rng.integers(1, windows - 2))  # the last window always has traffic
    lull_length = int(rng.integers(1, 3))
    phase = float(rng.uniform(0, 2 * np.pi))

    def load(t: np.ndarray) -> np.ndarray:
        level = 0.55 + 0.35 * np.sin(2 * np.pi * (t - start) / duration + phase)
        window = (t - start) // window_s
        return np.where((window >= lull) & (window < lull + lull_length), 0.02, level)

    times = start + np.arange(0, duration, interval_s)
    samples = []
    for index in rng.permutation(gpus).tolist():
        utilisation = np.clip(load(times) * 100 + rng.normal(0, 6, len(times)), 0, 100)
        for t, u in zip(times.tolist(), utilisation.tolist(), strict=True):
            unreadable = rng.random() < 0.01
            samples.append(
                {
                    "t_s": round(t, 3),
                    "index": index,
                    "gpu_utilization_pct": None if unreadable else int(round(u)),
                    "memory_utilization_pct": None if unreadable else int(round(u * 0.6)),
                    "power_w": round(90 + 6 * u, 1),
                    "sm_clock_mhz": 1980,
                }
            )
    samples.sort(key=lambda s: (s["t_s"], s["index"]))
    # Requests: a thinned Poisson process following the load, some running past the end.
    peak = rate_per_gpu * gpus
    count = rng.poisson(peak * duration)
    arrival = np.sort(rng.uniform(start - 30, end, count))
    keep = rng.random(count) < load(np.clip(arrival, start, end - 1e-9))
    arrival = arrival[keep]
    prompt = np.clip(np.rint(rng.lognormal(6.0, 0.6, len(arrival))), 1, 8192).astype(int)
    output = np.clip(np.rint(rng.lognormal(5.0, 0.7, len(arrival))), 1, 2048).astype(int)
    first = arrival + rng.uniform(0.05, 0.6, len(arrival))
    finish = first + output * rng.uniform(0.02, 0.05, len(arrival))
    failed = rng.random(len(arrival)) < 0.03
    requests = []
    for i in range(len(arrival)):
        unfinished = finish[i] >= end + 5 and rng.random() < 0.5
        requests.append(
            {
                "arrival_s": round(float(arrival[i]), 4),
                "first_token_s": None if failed[i] else round(float(first[i]), 4),
                "finish_s": None if unfinished else round(float(finish[i]), 4),
                "prompt_tokens": int(prompt[i]),
                "output_tokens": int(output[i]),
                "status": "error" if failed[i] else "ok",
            }
        )
    return {
        "start_s": start,
        "end_s": end,
        "interval_s": interval_s,
        "idle_below_pct": 5,
        "window_s": window_s,
        "gpu_samples": samples,
        "requests": requests,
    }


def alert_threshold(log: Mapping[str, Any], price_per_gpu_hour: float) -> float:
    """A requests-per-dollar threshold that some windows of `log` fall under and most do not:
    halfway between two windows' values, so that no window sits on the edge."""
    start, end = float(log["start_s"]), float(log["end_s"])
    served = [
        r
        for r in log["requests"]
        if r["status"] == "ok" and r["finish_s"] is not None and start <= r["finish_s"] < end
    ]
    values = sorted(set(window_requests_per_dollar(log, price_per_gpu_hour, served)))
    cut = max(1, len(values) // 3)
    return (values[cut - 1] + values[cut]) / 2
