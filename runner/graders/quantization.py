"""Grader for the `quantization` lab (Phase 2): weight-only INT8, INT4 and a calibrated INT4
method (GPTQ or AWQ family), measured side by side with the full-precision model in one run.

Trust boundary, as for the other labs: this module runs in the worker. Two sandboxed children
serve through the same adapter (runner.graders.quantization_adapter): the learner's, where
their `quantize` runs on the committed model, and a clean one where the grader's own quantizer
(runner.graders.quantization_reference) gives the full-precision baseline and plain
round-to-nearest INT4. The secret seed picks the held-out windows scored and the calibration
windows (runner.graders.quantization_lab.draw_windows). Every quality number is computed here
from the log-prob arrays (runner.graders.quantization_scoring); nothing the learner's code
says about itself is read.

What is graded where (lab.toml): bytes and quality on every device class, always on the
trained weights; decode speed is measured and reported everywhere and graded nowhere (the
lab declares its speed criteria with empty thresholds), on random weights of a real model's
shape on GPU nodes (every report says which).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runner.graders.base import (
    GraderBroken,
    GradeResult,
    evaluate_criteria,
    trusted,
    verdict,
)
from runner.graders.charts import bars_svg
from runner.graders.children import GradingChildren, grading_limits
from runner.graders.quantization_lab import (
    ADAPTER,
    GRADER_QUANTIZER,
    METHODS,
    METRIC_PREFIX,
    Options,
    Windows,
    describe_request,
    draw_windows,
)
from runner.graders.quantization_scoring import counted_bytes, quality
from runner.graders.reporting import svg_plot
from runner.graders.softmax_lab import timing_cpus
from runner.harness.client import HarnessFailure, ServedFunction
from runner.labspec import LabSpec
from runner.sandbox import ResourceLimits, SandboxPolicy

# Windows per log-probs request: bounds each answer to windows x tokens x vocab x 4 bytes.
CHUNK_WINDOWS = 8
# Methods whose decode speed is measured (the calibrated method stores what int4 does).
SPEED_METHODS = ("int8", "int4")


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
    windows = draw_windows(seed, options)
    children = GradingChildren(
        spec=spec,
        device_class=device_class,
        solution_path=solution_path,
        workdir=workdir,
        sandbox=sandbox,
        locate=locate,
        limits=grading_limits(
            limits,
            cpu_seconds=900,
            file_size_bytes=16 << 20,
            cpus=timing_cpus(options.threads) if device_class == "cpu" else None,
        ),
        threads=options.threads,
        max_payload_bytes=2 * CHUNK_WINDOWS * options.eval_tokens * 4 * 200_000,  # vocab <= 200k
    )
    with children:
        candidate = children.learner(adapter=ADAPTER)
        clean = children.grader_side(
            "clean", GRADER_QUANTIZER, label="the grader's baseline", adapter=ADAPTER
        )
        run = _Run(spec=spec, device_class=device_class, options=options, windows=windows)

        def steps() -> GradeResult:
            trusted(run.measure_baseline, clean)
            run.measure_candidate(candidate)
            if device_class == "gpu" and options.speed_model != "trained":
                trusted(run.measure_large_speed, clean, baseline=True)
                run.measure_large_speed(candidate, baseline=False)
            return run.finish(log_tail=candidate.log_tail())

        return children.result_of(steps, metrics=run.metrics, timeout_s=options.load_timeout_s)


class _Run:
    """The state of one grading run, so each step reads as one short method."""

    def __init__(
        self, *, spec: LabSpec, device_class: str, options: Options, windows: Windows
    ) -> None:
        self.spec = spec
        self.device_class = device_class
        self.options = options
        self.windows = windows
        self.device = "cuda" if device_class == "gpu" else "cpu"
        self.eval_ids = np.asarray(windows.evaluation, dtype=np.int64)
        self.measured: dict[str, float | None] = {}
        self.notes: dict[str, str] = {}
        self.problems: dict[str, str] = {}
        self.baseline: dict[str, Any] = {}
        self.reference: np.ndarray | None = None
        self.speed: dict[str, dict[str, Any]] = {}
        self.metrics: dict[str, Any] = {
            "weights": {
                "quality": "the committed trained target model (runner/llm/weights/target), "
                f"{options.dtype} as committed",
                "speed": (
                    "the same trained model"
                    if self.device == "cpu" or options.speed_model == "trained"
                    else f"random weights of {options.speed_model} shapes ({options.dtype})"
                ),
            },
            "windows": {
                "held_out": [len(windows.evaluation), options.eval_tokens],
                "calibration": [len(windows.calibration), options.calibration_tokens],
            },
            "group_size": options.group_size,
            "methods": {},
        }

    # -- the clean child --------------------------------------------------------------------

    def measure_baseline(self, clean: ServedFunction) -> None:
        """The full-precision model's bytes, log-probs and speed, then the grader's own
        round-to-nearest INT4's quality: all in the clean child, before the learner's run."""
        load = self._load(clean, "none")
        if load.get("problem") or "model_bytes" not in load:
            raise GraderBroken(f"the baseline model did not load: {load.get('problem')}")
        self.baseline = load
        self.reference = self._log_probs(clean, "the full-precision model")
        if self.reference is None:
            raise GraderBroken("the full-precision model's log-probs are not finite")
        if self.device == "cpu" or self.options.speed_model == "trained":
            self.speed["baseline"] = self._decode_all(clean)
        self.metrics["baseline"] = {
            "bytes": load["model_bytes"],
            "layer_bytes": load["layer_bytes"],
            "outside_layers_bytes": load["outside_layers_bytes"],
            "process_tensor_bytes": load["process_tensor_bytes"],
            "peak_bytes": load.get("peak_bytes"),
            "speed": self.speed.get("baseline"),
        }
        rtn = self._load(clean, "int4")
        if rtn.get("problem"):
            raise GraderBroken(f"the grader's own INT4 did not load: {rtn['problem']}")
        rtn_probs = self._log_probs(clean, "the grader's round-to-nearest INT4")
        if rtn_probs is None:
            raise GraderBroken("the grader's round-to-nearest INT4 gave non-finite log-probs")
        self.metrics["grader_int4_rtn"] = quality(self.reference, rtn_probs, self.eval_ids)
        self.metrics["baseline"]["perplexity"] = self.metrics["grader_int4_rtn"][
            "baseline_perplexity"
        ]

    # -- the learner's child ----------------------------------------------------------------

    def measure_candidate(self, candidate: ServedFunction) -> None:
        """Each method in turn. A method that raises or is refused is a failed criterion with
        the reason; a child that hangs or dies ends the run (HarnessFailure goes up)."""
        for method in METHODS:
            try:
                self._measure_method(candidate, method)
            except HarnessFailure as exc:
                alive = candidate.process.poll() is None
                if exc.kind != "error" or not alive:
                    raise
                self.problems[method] = exc.message

    def _measure_method(self, candidate: ServedFunction, method: str) -> None:
        load = self._load(candidate, method)
        summary: dict[str, Any] = {"load": {k: v for k, v in load.items() if k != "method"}}
        self.metrics["methods"][method] = summary
        if load.get("weight_files_opened"):
            self.problems[method] = (
                "quantize opened the committed weight files "
                f"({', '.join(load['weight_files_opened'])}) "
                "while the grader's model was in its hands: a quantized model must not reload the "
                "full-precision weights"
            )
            return
        if load.get("problem"):
            self.problems[method] = str(load["problem"])
            return
        charged = counted_bytes(load, baseline=self.baseline)
        summary["bytes"] = charged
        prefix = METRIC_PREFIX[method]
        self.measured[f"{prefix}_weight_bytes_ratio"] = charged["ratio"]
        probs = self._log_probs(candidate, f"your {method} model")
        if probs is None:
            self.notes[f"{prefix}_quality"] = (
                f"your {method} model's logits hold NaN or Inf on the held-out windows"
            )
        else:
            scores = quality(self.reference, probs, self.eval_ids)
            summary["quality"] = scores
            for key in ("perplexity_increase_pct", "kl", "top1_agreement"):
                self.measured[f"{prefix}_{key}"] = round(scores[key], 6)
            if method == "int4-calibrated":
                rtn_kl = self.metrics["grader_int4_rtn"]["kl"]
                self.measured["calibrated_kl_vs_rtn"] = round(scores["kl"] / rtn_kl, 4)
        if method in SPEED_METHODS and (
            self.device == "cpu" or self.options.speed_model == "trained"
        ):
            self.speed[method] = self._decode_all(candidate)
            summary["speed"] = self.speed[method]
            self._speedups(method)

    def measure_large_speed(self, child: ServedFunction, *, baseline: bool) -> None:
        """GPU scale: decode speed on random weights of a real model's shape."""
        for method in ("none",) if baseline else SPEED_METHODS:
            load = self._load(child, method, model=f"random:{self.options.speed_model}")
            if load.get("problem"):
                if baseline:
                    raise GraderBroken(f"the large baseline did not load: {load['problem']}")
                self.problems.setdefault(method, str(load["problem"]))
                continue
            name = "baseline" if baseline else method
            self.speed[name] = self._decode_all(child)
            self.metrics.setdefault("large_speed", {})[name] = {
                "bytes": load.get("model_bytes"),
                "peak_bytes": load.get("peak_bytes"),
                "speed": self.speed[name],
            }
            if not baseline:
                self._speedups(method)

    # -- requests ---------------------------------------------------------------------------

    def _load(
        self, child: ServedFunction, method: str, *, model: str = "trained"
    ) -> dict[str, Any]:
        request = describe_request(
            self.options, method, calibration=self.windows.calibration, device=self.device
        )
        request["model"] = model
        call = child.call_json(
            request,
            timeout_s=self.options.call_timeout_s,
            doing=f"quantizing the model with method {method!r}",
        )
        if call.returned_instead or not isinstance(call.answer, dict):
            return {"problem": f"the adapter could not report on it ({call.returned_instead})"}
        return call.answer

    def _log_probs(self, child: ServedFunction, what: str) -> np.ndarray | None:
        """The model's log-probs on every held-out window, or None if any is not finite."""
        parts = []
        for start in range(0, len(self.eval_ids), CHUNK_WINDOWS):
            chunk = self.eval_ids[start : start + CHUNK_WINDOWS]
            call = child.call_json(
                {"op": "log_probs", "windows": chunk.tolist()},
                timeout_s=self.options.call_timeout_s,
                doing=f"scoring {what} on held-out text",
            )
            answer = call.answer if isinstance(call.answer, dict) else {}
            if call.returned_instead or len(call.arrays) != 1:
                raise HarnessFailure("error", f"{what} returned no log-probs")
            array = call.arrays[0]
            if array.ndim != 3 or array.shape[:2] != chunk.shape:
                raise HarnessFailure(
                    "error",
                    f"{what} returned log-probs of shape {array.shape}, "
                    "not windows x tokens x vocab",
                )
            if self.reference is not None and array.shape[2] != self.reference.shape[2]:
                raise HarnessFailure(
                    "error",
                    f"{what} predicts {array.shape[2]} tokens, "
                    f"not the vocabulary's {self.reference.shape[2]}",
                )
            if not answer.get("finite", False) or not np.isfinite(array).all():
                return None
            parts.append(array)
        return np.concatenate(parts)

    def _decode_all(self, child: ServedFunction) -> dict[str, Any]:
        results = {}
        for batch in self.options.decode_batches:
            call = child.call_json(
                {
                    "op": "decode",
                    "batch": batch,
                    "prompt": self.options.decode_prompt,
                    "new_tokens": self.options.decode_tokens,
                    "reps": self.options.decode_reps,
                    "graphs": self._graphs_graded(),
                },
                timeout_s=self.options.call_timeout_s,
                doing=f"decoding at batch {batch}",
            )
            answer = call.answer if isinstance(call.answer, dict) else {}
            # The clock runs in the child; the round trip, timed here, bounds it from above.
            answer["round_trip_ms"] = round(call.elapsed_ns / 1e6, 3)
            results[str(batch)] = answer
        return results

    def _speedups(self, method: str) -> None:
        base, mine = self.speed.get("baseline"), self.speed.get(method)
        if not base or not mine:
            return
        for batch, numbers in mine.items():
            for kind in ("decode", "graphed_decode"):
                theirs = base.get(batch, {}).get(f"{kind}_tokens_per_s")
                ours = numbers.get(f"{kind}_tokens_per_s")
                if theirs and ours:
                    numbers[f"{kind}_speedup"] = round(ours / theirs, 3)
        first = mine.get(str(self.options.decode_batches[0]), {})
        graded = "graphed_decode_speedup" if self._graphs_graded() else "decode_speedup"
        self.measured[f"{method}_decode_speedup_b1"] = first.get(graded)
        if graded not in first and first.get("graph_problem"):
            self.notes[f"{METRIC_PREFIX[method]}_speed"] = (
                "its decode step could not be timed from a CUDA graph: " + first["graph_problem"]
            )

    def _graphs_graded(self) -> bool:
        """Whether the speed criteria compare graphed decode (GPU nodes, `decode_graphs`)."""
        return self.options.decode_graphs and self.device_class == "gpu"

    # -- the verdict ------------------------------------------------------------------------

    def finish(self, *, log_tail: str) -> GradeResult:
        self.metrics["measured"] = dict(self.measured)
        self.metrics["problems"] = dict(self.problems)
        self.metrics["evaluated_where"] = {
            c.name: [d for d in self.spec.device_classes if c.threshold_for(d) is not None]
            for c in self.spec.criteria
        }
        notes = {c.metric: self._why_missing(c.metric) for c in self.spec.criteria}
        criteria = evaluate_criteria(
            spec=self.spec, device_class=self.device_class, measured=self.measured, notes=notes
        )
        if len(self.problems) == len(METHODS):
            first = self.problems[METHODS[0]]
            return GradeResult(
                status="error",
                message=f"No method could be graded. {first}",
                criteria=criteria,
                metrics=self.metrics,
                log_tail=log_tail,
            )
        status, message = verdict(criteria)
        for method, problem in self.problems.items():
            message += f" {method}: {problem}."
        skipped = [c.name for c in criteria if not c.evaluated]
        if skipped and status in ("passed", "failed"):
            message += (
                f" Measured but not evaluated on {self.device_class}: {', '.join(skipped)} "
                "(GPU nodes only)."
            )
        return GradeResult(
            status=status,
            message=message,
            criteria=criteria,
            metrics=self.metrics,
            plots=self._plots(),
            log_tail=log_tail,
        )

    def _plots(self) -> list[dict[str, str]]:
        """Decode speed per batch, bytes and quality, for the full-precision model and each
        method that was measured: the results page shows them beside the criteria table."""
        methods = [m for m in METHODS if m in self.metrics.get("methods", {})]
        if not methods:
            return []
        summaries = self.metrics["methods"]
        plots = []
        speeds = {name: self.speed[name] for name in ("baseline", *methods) if name in self.speed}
        if speeds:
            batches = sorted({b for speed in speeds.values() for b in speed}, key=int)
            where = self.metrics["weights"]["speed"]
            plots.append(
                svg_plot(
                    "Decode tokens/s by batch size",
                    bars_svg(
                        f"Decode tokens/s ({where})",
                        groups=[f"batch {b}" for b in batches],
                        series={
                            ("full precision" if name == "baseline" else name): [
                                speed.get(b, {}).get("decode_tokens_per_s") for b in batches
                            ]
                            for name, speed in speeds.items()
                        },
                        unit="tokens/s",
                    ),
                )
            )
        plots.append(
            svg_plot(
                "Weight bytes and quality",
                bars_svg(
                    "Bytes (x bf16 layers), perplexity increase (%), KL (x100)",
                    groups=["bytes ratio", "perplexity +%", "KL x100"],
                    series={
                        method: [
                            summaries[method].get("bytes", {}).get("ratio"),
                            summaries[method].get("quality", {}).get("perplexity_increase_pct"),
                            _times(summaries[method].get("quality", {}).get("kl"), 100),
                        ]
                        for method in methods
                    },
                ),
            )
        )
        return plots

    def _why_missing(self, metric: str) -> str:
        for method, prefix in METRIC_PREFIX.items():
            if metric.startswith(f"{prefix}_"):
                if method in self.problems:
                    return self.problems[method] + "."
                if "speedup" in metric and f"{prefix}_speed" in self.notes:
                    return self.notes[f"{prefix}_speed"] + "."
                if f"{prefix}_quality" in self.notes:
                    return self.notes[f"{prefix}_quality"] + "."
        if "speedup" in metric:
            return "decode speed is only compared on GPU nodes' shapes."
        return "it could not be measured."


def _times(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor
