"""Command line: load-test an OpenAI-compatible server and print vLLM's result table.

    python -m runner.serving.loadgen --base-url http://127.0.0.1:8000 --model tiny \\
        --dataset random --num-prompts 200 --input-len 128 --output-len 64 \\
        --request-rate 8 --max-concurrency 32 --goodput ttft:200 tpot:50 \\
        --save-result out.json --plot out.svg

    # the highest rate whose p99 TTFT stays under 500 ms, between 1 and 64 req/s
    python -m runner.serving.loadgen --base-url unix:///tmp/engine.sock --model tiny \\
        --sweep 1:64 --slo p99_ttft_ms:500 --plot sweep.svg

The random dataset needs no tokenizer: a prompt is --input-len common English words,
about one token each (see runner/serving/loadgen/workload.py); a JSONL dataset has one
{"prompt": ..., "max_tokens": ...} per line. Exit status 0, or 1 when no request
completed, or 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from runner.serving.loadgen.http import Endpoint
from runner.serving.loadgen.metrics import LATENCY_METRICS, parse_slos, percentile_key
from runner.serving.loadgen.plots import latency_cdf_svg, sweep_svg
from runner.serving.loadgen.run import LoadResult, run_load_sync
from runner.serving.loadgen.sweep import find_max_rate, parse_slo
from runner.serving.loadgen.workload import RequestSpec, load_jsonl, random_requests

_HEADERS = {
    "ttft": ("TTFT", "Time to First Token"),
    "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
    "itl": ("ITL", "Inter-token Latency"),
    "e2el": ("E2EL", "End-to-end Latency"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runner.serving.loadgen",
        description="Load-test an OpenAI-compatible LLM server with vLLM's serving metrics.",
    )
    add = parser.add_argument
    add("--base-url", required=True, help="http://host:port or unix:///path/to/socket")
    add("--model", required=True, help="the model name the server expects")
    add("--endpoint", default="/v1/completions", help="/v1/completions or /v1/chat/completions")
    add("--dataset", default="random", help="'random' or a .jsonl file of {prompt, max_tokens}")
    add("--num-prompts", type=int, default=None, help="requests to send (random: 100)")
    add("--input-len", type=int, default=128, help="random prompts: words (about tokens)")
    add("--output-len", type=int, default=128, help="tokens to generate per request")
    add("--no-ignore-eos", action="store_true", help="let requests stop at end-of-sequence")
    add("--request-rate", type=float, default=math.inf, help="req/s; inf sends all at once")
    add("--burstiness", type=float, default=1.0, help="1: Poisson; <1 burstier; inf: fixed")
    add("--max-concurrency", type=int, default=None, help="at most this many in flight")
    add("--goodput", nargs="+", default=None, metavar="NAME:MS", help="e.g. ttft:200 tpot:50")
    add("--percentile-metrics", default=",".join(LATENCY_METRICS), help="ttft,tpot,itl,e2el")
    add("--metric-percentiles", default="50,90,95,99", help="e.g. 50,99")
    add("--seed", type=int, default=0)
    add("--timeout", type=float, default=600.0, help="seconds per request")
    add("--overall-timeout", type=float, default=None, help="seconds for the whole run")
    add("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="default: $OPENAI_API_KEY")
    add("--extra-body", type=json.loads, default=None, help="JSON merged into every body")
    add("--save-result", type=Path, default=None, metavar="FILE.json")
    add("--plot", type=Path, default=None, metavar="FILE.svg")
    add("--sweep", default=None, metavar="LOW:HIGH", help="find the highest rate meeting --slo")
    add("--sweep-steps", type=int, default=4, help="bisection runs after LOW and HIGH")
    add("--slo", nargs="+", default=None, metavar="FIELD:BOUND", help="e.g. p99_ttft_ms:500")
    return parser


def _api(endpoint: str) -> str:
    if endpoint.rstrip("/").endswith("chat/completions"):
        return "chat"
    if endpoint.rstrip("/").endswith("completions"):
        return "completions"
    raise ValueError(f"--endpoint {endpoint}: use /v1/completions or /v1/chat/completions")


def _requests(args: argparse.Namespace) -> list[RequestSpec]:
    ignore_eos = not args.no_ignore_eos
    if args.dataset == "random":
        return random_requests(
            args.num_prompts or 100,
            input_len=args.input_len,
            output_len=args.output_len,
            seed=args.seed,
            ignore_eos=ignore_eos,
        )
    return load_jsonl(
        args.dataset,
        default_max_tokens=args.output_len,
        limit=args.num_prompts,
        ignore_eos=ignore_eos,
    )


def format_report(result: dict[str, Any], *, metrics: list[str], percentiles: list[float]) -> str:
    """vLLM's table (`vllm bench serve`), from LoadResult.to_json()."""
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label: str, value: Any, decimals: bool = True) -> None:
        text = "-" if value is None else (f"{value:<10.2f}" if decimals else f"{value:<10}")
        lines.append(f"{label:<40} {text}".rstrip())

    row("Successful requests:", result["completed"], False)
    row("Failed requests:", result["failed"], False)
    if result["max_concurrency"] is not None:
        row("Maximum request concurrency:", result["max_concurrency"], False)
    if result["request_rate"] != "inf":
        row("Request rate configured (RPS):", result["request_rate"])
    row("Benchmark duration (s):", result["duration"])
    row("Total input tokens:", result["total_input_tokens"], False)
    row("Total generated tokens:", result["total_output_tokens"], False)
    row("Request throughput (req/s):", result["request_throughput"])
    if result["goodput_slos_ms"]:
        row("Request goodput (req/s):", result["request_goodput"])
    row("Output token throughput (tok/s):", result["output_throughput"])
    row("Peak concurrent requests:", result["max_concurrent_requests"], False)
    row("Total token throughput (tok/s):", result["total_token_throughput"])
    sources = ", ".join(f"{k} ({v})" for k, v in result["output_tokens_from"].items())
    lines.append(f"{'Output tokens counted from:':<40} {sources or '-'}")
    for metric in metrics:
        short, header = _HEADERS[metric]
        lines.append("{s:{c}^{n}}".format(s=header, n=50, c="-"))
        row(f"Mean {short} (ms):", result[f"mean_{metric}_ms"])
        row(f"Median {short} (ms):", result[f"median_{metric}_ms"])
        row(f"Std {short} (ms):", result[f"std_{metric}_ms"])
        for p in percentiles:
            key = percentile_key(metric, p)
            row(f"{key.split('_')[0].upper()} {short} (ms):", result[key])
    lines.append("=" * 50)
    errors = sorted({e for e in result.get("errors", []) if e})
    if errors:
        lines.append(f"Errors ({len(errors)} distinct, first 5):")
        lines += [f"  {error[:200]}" for error in errors[:5]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        endpoint = Endpoint(args.base_url, api_key=args.api_key)
        api = _api(args.endpoint)
        metrics = [m.strip() for m in args.percentile_metrics.split(",") if m.strip()]
        unknown = set(metrics) - set(LATENCY_METRICS)
        if unknown:
            raise ValueError(f"--percentile-metrics: unknown {sorted(unknown)}")
        percentiles = [float(p) for p in args.metric_percentiles.split(",")]
        slos = parse_slos(args.goodput) if args.goodput else None
        requests = _requests(args)
        if args.extra_body:
            requests = [
                RequestSpec(r.prompt, r.max_tokens, r.ignore_eos, args.extra_body, r.prompt_len)
                for r in requests
            ]
        sweep = _parse_sweep(args, slos, percentiles)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))

    def run(rate: float) -> LoadResult:
        return run_load_sync(
            endpoint,
            requests,
            model=args.model,
            api=api,
            rate=rate,
            burstiness=args.burstiness,
            max_concurrency=args.max_concurrency,
            seed=args.seed,
            timeout_s=args.timeout,
            overall_timeout_s=args.overall_timeout,
            path=args.endpoint,
        )

    if sweep is not None:
        return _run_sweep(args, run, sweep, slos=slos, metrics=metrics, percentiles=percentiles)
    result = run(args.request_rate)
    report = result.to_json(percentiles=percentiles, slos=slos, metrics=metrics)
    print(format_report(report, metrics=metrics, percentiles=percentiles))
    if args.save_result:
        args.save_result.write_text(json.dumps(report, indent=1))
    if args.plot:
        args.plot.write_text(latency_cdf_svg({args.model: result.outputs}))
    return 0 if report["completed"] else 1


def _parse_sweep(
    args: argparse.Namespace, slos: dict[str, float] | None, percentiles: list[float]
) -> tuple[float, float, dict[str, float]] | None:
    if args.sweep is None:
        if args.slo:
            raise ValueError("--slo is for --sweep LOW:HIGH (goodput SLOs go in --goodput)")
        return None
    low, colon, high = args.sweep.partition(":")
    try:
        bounds = float(low), float(high)
    except ValueError:
        bounds = (math.nan, math.nan)
    if not colon or not 0 < bounds[0] < bounds[1] < math.inf:
        raise ValueError(f"--sweep {args.sweep}: write LOW:HIGH with 0 < LOW < HIGH, in req/s")
    if not args.slo:
        raise ValueError("--sweep needs --slo, e.g. --slo p99_ttft_ms:500")
    slo = parse_slo(args.slo)
    if "goodput_fraction" in slo and not slos:
        raise ValueError("--slo goodput_fraction needs --goodput, e.g. --goodput ttft:200")
    for name in slo:  # make sure every percentile the SLO names is computed
        if name.startswith("p") and name.endswith("_ms"):
            p = float(name[1:].split("_")[0])
            if p not in percentiles:
                percentiles.append(p)
    return bounds[0], bounds[1], slo


def _run_sweep(
    args: argparse.Namespace,
    run: Any,
    sweep: tuple[float, float, dict[str, float]],
    *,
    slos: dict[str, float] | None,
    metrics: list[str],
    percentiles: list[float],
) -> int:
    low, high, slo = sweep

    def run_at(rate: float) -> dict[str, Any]:
        summary = run(rate).summary(percentiles=percentiles, slos=slos, metrics=metrics)
        print(
            f"rate {rate:8.3f} req/s: {summary['completed']} completed, {summary['failed']} "
            f"failed, {summary['output_throughput']:.1f} tok/s",
            flush=True,
        )
        return summary

    found = find_max_rate(run_at, slo, low=low, high=high, steps=args.sweep_steps)
    print("{s:{c}^{n}}".format(s=" Rate Sweep ", n=50, c="="))
    for point in found.points:
        verdict = "meets" if point.met else "misses: " + "; ".join(point.misses)
        print(f"{point.rate:10.3f} req/s  {verdict}")
    best = found.best_rate
    print(
        f"Highest rate meeting the SLO: {best:.3f} req/s"
        if best is not None
        else "No rate tried met the SLO, not even the lowest."
    )
    if args.save_result:
        args.save_result.write_text(json.dumps(found.to_json(), indent=1))
    if args.plot:
        args.plot.write_text(sweep_svg(found.points, slo=slo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
