"""What one streamed request measured (`RequestOutput`) and what a run measured
(`summarize`), with exactly the definitions and JSON field names of vLLM's serving benchmark
(`vllm bench serve`, formerly benchmarks/benchmark_serving.py, `calculate_metrics`), so our
numbers and vLLM's can sit in one table.

Tools disagree on names (some call TPOT "ITL", some count the first token in it), so every
metric is defined in one sentence in `DEFINITIONS`, which `definitions()` returns for the
pages that show the numbers:

| field | definition |
|---|---|
| completed / failed | requests that streamed to `[DONE]` / that did not (never averaged in) |
| ttft | time to first token: request sent -> first streamed chunk carrying a choice |
| tpot | (E2EL - TTFT) / (output tokens - 1), for requests of more than one token |
| itl | gaps between consecutive chunks of a request, all requests' gaps pooled |
| e2el | end-to-end latency: request sent -> last chunk carrying a choice |
| *_throughput, request_goodput | per second of the run's duration |

Statistics are computed from the raw samples as vLLM does: `np.mean`, `np.std` (population),
`np.median` and `np.percentile` (linear interpolation). One deliberate difference: where a
metric has no sample at all (every request failed) vLLM reports 0, which reads as a perfect
latency; we report None (null in JSON).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_METRICS = ("ttft", "tpot", "e2el")  # what vLLM's --goodput accepts
DEFAULT_PERCENTILES = (50, 90, 95, 99)

DEFINITIONS: tuple[tuple[str, str, str], ...] = (
    (
        "completed",
        "Successful requests",
        "Requests that streamed at least one chunk carrying a choice and ended with "
        "`data: [DONE]`; only these enter the latencies and throughputs.",
    ),
    (
        "failed",
        "Failed requests",
        "Requests that got an HTTP error, a timeout, a refused connection, a malformed or cut "
        "stream, or were cancelled at the run's deadline; counted, never averaged in.",
    ),
    (
        "duration",
        "Benchmark duration (s)",
        "Seconds from the start of the run to its last response (or to its deadline).",
    ),
    (
        "total_input_tokens",
        "Total input tokens",
        "Prompt tokens of the completed requests: the server's usage.prompt_tokens where it "
        "reports it, else the workload's prompt length.",
    ),
    (
        "total_output_tokens",
        "Total generated tokens",
        "Output tokens of the completed requests, each counted from the streamed token_ids, "
        "else usage.completion_tokens, else the non-empty content chunks (at least 1).",
    ),
    ("request_throughput", "Request throughput (req/s)", "completed / duration."),
    ("output_throughput", "Output token throughput (tok/s)", "total_output_tokens / duration."),
    (
        "total_token_throughput",
        "Total token throughput (tok/s)",
        "(total_input_tokens + total_output_tokens) / duration.",
    ),
    (
        "request_goodput",
        "Request goodput (req/s)",
        "Completed requests that met every SLO given (ttft, tpot, e2el in ms; a request of "
        "one output token counts TPOT 0) / duration; null when no SLO is given.",
    ),
    (
        "ttft",
        "TTFT: time to first token (ms)",
        "From sending the request to receiving the first streamed chunk that carries a choice "
        "(the prefill and any queueing in the server).",
    ),
    (
        "tpot",
        "TPOT: time per output token, first excluded (ms)",
        "(E2EL - TTFT) / (output tokens - 1), one value per request of more than one output "
        "token: the average decode step that request saw.",
    ),
    (
        "itl",
        "ITL: inter-token latency (ms)",
        "The time between two consecutive streamed chunks of one request, all gaps of all "
        "requests pooled; a chunk that carries several tokens is still one gap.",
    ),
    (
        "e2el",
        "E2EL: end-to-end latency (ms)",
        "From sending the request to receiving its last chunk that carries a choice.",
    ),
    (
        "statistics",
        "mean, median, std, pNN",
        "Over the raw samples of the completed requests: numpy mean, median, population "
        "standard deviation and percentile (linear interpolation); null without samples.",
    ),
    (
        "max_concurrent_requests",
        "Peak concurrent requests",
        "The most completed requests that were in flight at the same instant.",
    ),
)


def definitions() -> list[dict[str, str]]:
    """[{"key", "name", "definition"}] in display order, for pages that show the metrics."""
    return [{"key": k, "name": n, "definition": d} for k, n, d in DEFINITIONS]


@dataclass
class RequestOutput:
    """One request as the client saw it; times in seconds from time.perf_counter().

    `output_tokens_from` says how output_tokens was counted: "token_ids" (the server
    streamed them, vLLM's `return_token_ids`), "usage" (usage.completion_tokens of the last
    chunk) or "chunks" (non-empty content chunks, a lower bound when chunks carry several
    tokens)."""

    success: bool = False
    error: str = ""
    ttft_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    e2el_s: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    output_tokens_from: str = ""
    generated_text: str = ""
    token_ids: list[int] | None = None
    start_time: float = 0.0
    queued_s: float = 0.0  # waiting for a --max-concurrency slot before it was sent

    @property
    def tpot_s(self) -> float | None:
        if not self.success or self.output_tokens <= 1:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)


def parse_slos(pairs: Iterable[str] | str) -> dict[str, float]:
    """vLLM's --goodput syntax: ["ttft:200", "tpot:50"] (or one string with spaces) ->
    {"ttft": 200.0, "tpot": 50.0}, milliseconds."""
    if isinstance(pairs, str):
        pairs = pairs.split()
    slos: dict[str, float] = {}
    for pair in pairs:
        name, colon, value = pair.partition(":")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not colon or math.isnan(number):
            raise ValueError(
                f"SLO {pair!r}: write NAME:MILLISECONDS, e.g. ttft:200 tpot:50 "
                f"(names: {', '.join(SLO_METRICS)})"
            )
        slos[name.strip()] = number
    return check_slos(slos)


def check_slos(slos: dict[str, float]) -> dict[str, float]:
    for name, value in slos.items():
        if name not in SLO_METRICS:
            raise ValueError(
                f"unknown SLO {name!r}: goodput SLOs are per request, one of "
                f"{', '.join(SLO_METRICS)} (milliseconds)"
            )
        if not value >= 0:
            raise ValueError(f"SLO {name}:{value} must be a non-negative number of milliseconds")
    return dict(slos)


def percentile_key(metric: str, p: float) -> str:
    """vLLM's field name: p99_ttft_ms, p99.9_ttft_ms."""
    word = str(int(p)) if int(p) == p else str(p)
    return f"p{word}_{metric}_ms"


def output_lens(outputs: Sequence[RequestOutput]) -> list[int]:
    """Output tokens per request as vLLM counts them: 0 for a failed request, and at least
    1 for a completed one (it streamed a chunk)."""
    return [(o.output_tokens or 1) if o.success else 0 for o in outputs]


def _stats(samples: list[float], metric: str, percentiles: Sequence[float]) -> dict[str, Any]:
    names = [f"mean_{metric}_ms", f"median_{metric}_ms", f"std_{metric}_ms"]
    names += [percentile_key(metric, p) for p in percentiles]
    if not samples:
        return dict.fromkeys(names)
    values = np.asarray(samples, dtype=float) * 1000
    numbers = [np.mean(values), np.median(values), np.std(values)]
    numbers += [np.percentile(values, p) for p in percentiles]
    return {name: float(number) for name, number in zip(names, numbers, strict=True)}


def _peak_concurrency(outputs: Sequence[RequestOutput]) -> int:
    # Half-open intervals [start, end): an end and a start at the same instant do not overlap.
    events = sorted(
        [(o.start_time, 1) for o in outputs] + [(o.start_time + o.e2el_s, -1) for o in outputs]
    )
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def summarize(
    outputs: Sequence[RequestOutput],
    duration_s: float,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slos: dict[str, float] | None = None,
    metrics: Sequence[str] = LATENCY_METRICS,
) -> dict[str, Any]:
    """vLLM's result fields for these outputs over `duration_s` seconds. `slos` (ms, keys
    ttft / tpot / e2el) adds request_goodput; `metrics` picks which latencies get
    mean / median / std / pNN fields (vLLM's --percentile-metrics)."""
    if not duration_s > 0:
        raise ValueError(f"duration_s must be positive, not {duration_s}")
    for p in percentiles:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p} is not between 0 and 100")
    unknown = set(metrics) - set(LATENCY_METRICS)
    if unknown:
        raise ValueError(
            f"unknown metric(s) {sorted(unknown)}: choose from {', '.join(LATENCY_METRICS)}"
        )
    slos = check_slos(slos) if slos else {}
    done = [o for o in outputs if o.success]
    lens = [n for o, n in zip(outputs, output_lens(outputs), strict=True) if o.success]
    samples: dict[str, list[float]] = {
        "ttft": [o.ttft_s for o in done],
        "tpot": [(o.e2el_s - o.ttft_s) / (n - 1) for o, n in zip(done, lens, strict=True) if n > 1],
        "itl": [gap for o in done for gap in o.itl_s],
        "e2el": [o.e2el_s for o in done],
    }
    total_input = sum(o.prompt_tokens for o in done)
    total_output = sum(lens)
    goodput = None
    if slos:
        good = 0
        for o, n in zip(done, lens, strict=True):
            # vLLM: a request of one output token has TPOT 0 for goodput.
            values = {
                "ttft": o.ttft_s,
                "tpot": (o.e2el_s - o.ttft_s) / (n - 1) if n > 1 else 0.0,
                "e2el": o.e2el_s,
            }
            good += all(values[name] <= limit / 1000 for name, limit in slos.items())
        goodput = good / duration_s
    summary: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(done),
        "failed": len(outputs) - len(done),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(done) / duration_s,
        "request_goodput": goodput,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
        "max_concurrent_requests": _peak_concurrency(done),
    }
    for metric in LATENCY_METRICS:
        if metric in metrics:
            summary.update(_stats(samples[metric], metric, percentiles))
    return summary
