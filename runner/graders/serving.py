"""Grader for the `serving` lab (Phase 2/3): the learner's continuous-batching scheduler and KV
block manager, served by the project's engine, against static batching on the same model, the
same memory and the same workload.

Trust boundary, as for the other labs: this module runs in the worker. Two sandboxed children
serve through the same adapter (runner.graders.serving_adapter): the learner's, whose engine
runs their `Scheduler` and `BlockManager`, and a clean one whose engine runs the static
baseline and which also computes the reference tokens (each prompt generated alone, with the
HF model). Each child's server accepts on a Unix socket this process made and handed in; the
load harness (runner.serving.loadgen) runs here and times every streamed token from outside.
The secret seed picks the prompts and the output lengths.

What is graded (lab.toml): every request completes with the reference's greedy tokens; output
throughput over the baseline's on the same burst of requests (runs alternated); p99 time to
first token of a Poisson stream of requests at the graded rate, against the SLO.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner.graders.base import (
    GraderBroken,
    GradeResult,
    evaluate_criteria,
    trusted,
    verdict,
)
from runner.graders.children import GradingChildren, grading_limits
from runner.graders.reporting import svg_plot
from runner.graders.serving_lab import (
    ADAPTER,
    BASELINE,
    MODEL_NAME,
    Comparison,
    Options,
    Workload,
    compare_tokens,
    draw_workload,
)
from runner.graders.serving_vllm import compare_with_vllm
from runner.graders.softmax_lab import timing_cpus
from runner.harness.client import HarnessFailure, ServedFunction
from runner.labspec import LabSpec
from runner.llm import model_name
from runner.sandbox import ResourceLimits, SandboxPolicy
from runner.serving.loadgen import LoadResult, RequestSpec, latency_cdf_svg, run_load_sync

PERCENTILES = (50, 90, 99)


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
    device = "cuda" if device_class == "gpu" else "cpu"
    burst = draw_workload(seed, options, count=options.num_requests, salt=1)
    stream = draw_workload(seed, options, count=options.slo_requests, salt=2)
    warmup = draw_workload(seed, options, count=options.warmup_requests, salt=3)
    run = _Run(spec=spec, device_class=device_class, options=options, device=device)
    with contextlib.ExitStack() as stack:
        sockets = stack.enter_context(_socket_folder())
        candidate_sock, candidate_url = _listening_socket(sockets, "candidate.sock")
        baseline_sock, baseline_url = _listening_socket(sockets, "baseline.sock")
        stack.callback(candidate_sock.close)
        stack.callback(baseline_sock.close)
        children = stack.enter_context(
            GradingChildren(
                spec=spec,
                device_class=device_class,
                solution_path=solution_path,
                workdir=workdir,
                sandbox=sandbox,
                locate=locate,
                limits=grading_limits(
                    limits,
                    cpu_seconds=1200,
                    file_size_bytes=16 << 20,
                    # The engine thread, the server thread and torch's threads share these.
                    cpus=timing_cpus(options.threads) if device == "cpu" else None,
                ),
                threads=options.threads,
                max_payload_bytes=64 << 20,
            )
        )
        candidate = children.learner(
            adapter=ADAPTER,
            label=f"your {spec.solution}",
            pass_fds=(candidate_sock.fileno(),),
        )
        clean = children.grader_side(
            "clean",
            BASELINE,
            label="the static-batching baseline",
            adapter=ADAPTER,
            pass_fds=(baseline_sock.fileno(),),
        )

        def steps() -> GradeResult:
            trusted(run.start, clean, baseline_sock, side="baseline")
            run.start(candidate, candidate_sock, side="candidate")
            trusted(run.reference, clean, burst)
            run.warm_up(baseline_url, candidate_url, warmup)
            run.throughput(baseline_url, candidate_url, burst)
            run.slo(baseline_url, candidate_url, stream)
            run.vllm(burst, logs=workdir / "logs")
            run.status(candidate)
            return run.finish(log_tail=candidate.log_tail())

        return children.result_of(steps, metrics=run.metrics, timeout_s=options.load_timeout_s)


@contextlib.contextmanager
def _socket_folder() -> Iterator[Path]:
    """A private folder for the two sockets, short enough for a Unix socket path."""
    with tempfile.TemporaryDirectory(prefix="serving-") as folder:
        os.chmod(folder, 0o700)
        yield Path(folder)


def _listening_socket(folder: Path, name: str) -> tuple[socket.socket, str]:
    path = folder / name
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(128)
    os.set_inheritable(sock.fileno(), True)
    return sock, f"unix://{path}"


def _requests(workload: Workload) -> list[RequestSpec]:
    return [
        RequestSpec(
            prompt=prompt,
            max_tokens=max_tokens,
            ignore_eos=True,
            extra={"return_token_ids": True},
            prompt_len=len(prompt),
        )
        for prompt, max_tokens in zip(workload.prompts, workload.max_tokens, strict=True)
    ]


class _Run:
    """The state of one grading run, so each step reads as one short method."""

    def __init__(self, *, spec: LabSpec, device_class: str, options: Options, device: str):
        self.spec = spec
        self.device_class = device_class
        self.options = options
        self.device = device
        self.metrics: dict[str, Any] = {"settings": options.engine_settings(device=device)}
        self.measured: dict[str, float | None] = {}
        self.notes: dict[str, str] = {}
        self.plots: list[dict[str, str]] = []
        self.mismatches: list[dict[str, Any]] = []
        self.reference_tokens: list[dict[str, Any]] = []
        self.candidate_failure: str | None = None
        # What the learner's engine served in the measured runs, for the fleet's cost per 1K
        # tokens (labs/fleet_costs.py): output tokens, and the seconds the runs took.
        self.metrics["tokens_served"] = {"output_tokens": 0, "seconds": 0.0, "runs": 0}

    def start(self, child: ServedFunction, sock: socket.socket, *, side: str) -> None:
        answer = child.call_json(
            {
                "op": "start",
                "settings": self.options.engine_settings(device=self.device),
                "listen_fd": sock.fileno(),
                "model_name": MODEL_NAME,
            },
            timeout_s=self.options.load_timeout_s,
            doing="starting the engine with your Scheduler and BlockManager",
        ).answer
        if not isinstance(answer, dict) or not answer.get("listening"):
            raise HarnessFailure("error", f"{child.subject} did not start its server: {answer!r}")
        self.metrics.setdefault("kv_cache_bytes", answer.get("kv_cache_bytes"))

    def reference(self, clean: ServedFunction, workload: Workload) -> None:
        answer = clean.call_json(
            {"op": "reference", "prompts": workload.prompts, "max_tokens": workload.max_tokens},
            timeout_s=self.options.run_timeout_s,
            doing="generating the reference tokens",
        ).answer
        if not isinstance(answer, list) or len(answer) != len(workload):
            raise GraderBroken(f"the reference generation returned {type(answer).__name__}")
        self.reference_tokens = answer

    def _load(self, url: str, workload: Workload, *, rate: float, seed: int) -> LoadResult:
        return run_load_sync(
            url,
            _requests(workload),
            model=MODEL_NAME,
            rate=rate,
            seed=seed,
            timeout_s=self.options.request_timeout_s,
            overall_timeout_s=self.options.run_timeout_s,
        )

    def warm_up(self, baseline_url: str, candidate_url: str, warmup: Workload) -> None:
        """A few requests to each engine first, unmeasured: the first steps on a device pay
        for allocations and kernel selection, which no steady server pays per request."""
        if len(warmup):
            for url in (baseline_url, candidate_url):
                self._load(url, warmup, rate=float("inf"), seed=0)

    def throughput(self, baseline_url: str, candidate_url: str, burst: Workload) -> None:
        """Every request at once to each engine, alternated so that drift hits both; the
        candidate's tokens from its first run are checked against the reference."""
        runs: dict[str, list[LoadResult]] = {"baseline": [], "candidate": []}
        for round_ in range(self.options.rounds):
            runs["baseline"].append(self._load(baseline_url, burst, rate=float("inf"), seed=round_))
            runs["candidate"].append(
                self._load(candidate_url, burst, rate=float("inf"), seed=round_)
            )
        # Each run summarised once, with the percentiles the report shows.
        summaries = {
            side: [r.summary(percentiles=PERCENTILES) for r in results]
            for side, results in runs.items()
        }
        for summary in summaries["candidate"]:
            self._served(summary)
        first = runs["candidate"][0]
        comparison = self._compare(first)
        baseline_check = self._compare(runs["baseline"][0])
        if baseline_check.correct_fraction < 1.0:
            raise GraderBroken(
                f"the static baseline's tokens differ from the reference: {baseline_check.wrong}"
            )
        completed = [s["completed"] / len(burst) for s in summaries["candidate"]]
        self.measured["correct_fraction"] = round(comparison.correct_fraction, 4)
        self.measured["completed_fraction"] = round(min(completed), 4)
        self.mismatches = comparison.wrong
        errors = [o.error for r in runs["candidate"] for o in r.outputs if not o.success]
        if errors:
            self.candidate_failure = errors[0]
        throughput = {
            side: [s["output_throughput"] for s in results] for side, results in summaries.items()
        }
        base = statistics.fmean(throughput["baseline"])
        cand = statistics.fmean(throughput["candidate"])
        gain = cand / base if base > 0 and min(completed) == 1.0 else None
        if gain is None:
            self.notes["throughput_gain"] = "not every request completed"
        self.measured["throughput_gain"] = None if gain is None else round(gain, 3)
        self.metrics["burst"] = {
            "requests": len(burst),
            "prompt_tokens": sum(len(p) for p in burst.prompts),
            "output_tokens": sum(burst.max_tokens),
            "output_throughput": throughput,
            "ties": comparison.ties,
            "exact": comparison.exact,
            "baseline": summaries["baseline"][0],
            "candidate": summaries["candidate"][0],
        }
        self.plots.append(
            svg_plot(
                "Latency CDFs, every request at once",
                latency_cdf_svg(
                    {
                        "static batching": runs["baseline"][0].outputs,
                        "yours": first.outputs,
                    }
                ),
            )
        )

    def _served(self, summary: dict[str, Any]) -> None:
        served = self.metrics["tokens_served"]
        served["output_tokens"] += int(summary["total_output_tokens"])
        served["seconds"] = round(served["seconds"] + float(summary["duration"]), 3)
        served["runs"] += 1

    def _compare(self, result: LoadResult) -> Comparison:
        return compare_tokens(
            [o.token_ids if o.success else None for o in result.outputs],
            self.reference_tokens,
            tie_margin=self.options.tie_margin,
        )

    def slo(self, baseline_url: str, candidate_url: str, stream: Workload) -> None:
        """A Poisson stream at the graded rate: p99 TTFT against the SLO (the baseline's is
        shown beside it)."""
        rate = self.options.slo_rate
        summaries = {}
        for side, url in (("baseline", baseline_url), ("candidate", candidate_url)):
            result = self._load(url, stream, rate=rate, seed=7)
            summaries[side] = result.summary(
                percentiles=PERCENTILES, slos={"ttft": self.options.slo_ttft_ms}
            )
        cand = summaries["candidate"]
        self._served(cand)
        complete = cand["completed"] == len(stream)
        self.measured["p99_ttft_ms"] = (
            round(cand["p99_ttft_ms"], 2) if complete and cand.get("p99_ttft_ms") else None
        )
        if not complete:
            self.notes["p99_ttft_ms"] = f"{cand['failed']} of {len(stream)} requests failed"
        self.metrics["slo_run"] = {"rate": rate, "requests": len(stream), **summaries}

    def vllm(self, burst: Workload, *, logs: Path) -> None:
        """The same burst against vLLM where it is installed (shown, never graded)."""
        self.metrics["vllm"] = compare_with_vllm(
            _requests(burst),
            device=self.device,
            model_dir=Path(model_name("target")),
            model_name=MODEL_NAME,
            dtype=self.options.dtype,
            max_model_len=self.options.max_model_len,
            log_path=logs / "vllm.log",
        )

    def status(self, candidate: ServedFunction) -> None:
        with contextlib.suppress(HarnessFailure):
            answer = candidate.call_json(
                {"op": "status"}, timeout_s=30, doing="reading the engine's counters"
            ).answer
            if isinstance(answer, dict):
                self.metrics["engine_reported"] = answer
                if answer.get("failure"):
                    self.candidate_failure = str(answer["failure"])

    def finish(self, *, log_tail: str) -> GradeResult:
        criteria = evaluate_criteria(
            spec=self.spec,
            device_class=self.device_class,
            measured=self.measured,
            notes=self.notes,
        )
        self.metrics["measured"] = dict(self.measured)
        status, message = verdict(criteria)
        if self.candidate_failure:
            message += f" Your engine reported: {self.candidate_failure}"
        if self.mismatches:
            message += f" First wrong request: {self.mismatches[0]['problem']}."
        vllm = self.metrics.get("vllm") or {}
        if vllm.get("burst"):
            mine = (self.metrics.get("burst") or {}).get("candidate") or {}
            message += (
                f" vLLM {vllm['version']} on the same burst: "
                f"{vllm['burst']['output_throughput']:.0f} output tokens/s "
                f"(yours: {mine.get('output_throughput') or 0:.0f})."
            )
        elif vllm.get("note"):
            message += f" {vllm['note']}"
        return GradeResult(
            status=status,
            message=message,
            criteria=criteria,
            metrics=self.metrics,
            mismatches=self.mismatches,
            plots=self.plots,
            log_tail=log_tail,
        )
