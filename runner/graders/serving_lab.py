"""The `serving` lab's definition for its grader: options read from lab.toml, the workload the
secret seed draws, the engine settings both children get, and how generated tokens are
compared with the reference.

runner.graders.serving grades with them; runner.graders.serving_adapter runs in both sandboxed
children (the learner's scheduler, and the grader's static-batching baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.labspec import LabSpec
from runner.serving.lab_tools import Workload, sample_workload

ADAPTER = "runner.graders.serving_adapter:serve_engine"
# The clean child serves the baseline: static batching with KV reserved up front.
BASELINE = "runner.graders.serving_adapter:static_scheduler"
MODEL_NAME = "target"


@dataclass(frozen=True)
class Options:
    num_requests: int
    prompt_tokens: tuple[int, int]  # inclusive range, drawn per request
    output_tokens: tuple[int, int]
    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    dtype: str
    rounds: int  # throughput runs per engine, alternated: baseline, candidate, baseline, ...
    slo_rate: float  # requests/s of the Poisson run whose p99 TTFT is graded
    slo_requests: int
    warmup_requests: int
    slo_ttft_ms: float
    tie_margin: float  # a divergence where the reference's top-2 logits are closer is a tie
    load_timeout_s: float
    request_timeout_s: float
    run_timeout_s: float
    threads: int

    @classmethod
    def from_spec(cls, spec: LabSpec, device_class: str) -> Options:
        options = dict(spec.options)
        scale = {**options, **dict(options.get("scale", {}).get(device_class, {}))}
        return cls(
            num_requests=int(scale["num_requests"]),
            prompt_tokens=_range(scale["prompt_tokens"]),
            output_tokens=_range(scale["output_tokens"]),
            num_blocks=int(scale["num_blocks"]),
            block_size=int(scale["block_size"]),
            max_num_seqs=int(scale["max_num_seqs"]),
            max_num_batched_tokens=int(scale["max_num_batched_tokens"]),
            max_model_len=int(scale["max_model_len"]),
            dtype=str(scale.get("dtype", "float32")),
            rounds=int(scale.get("rounds", 1)),
            slo_rate=float(scale["slo_rate"]),
            slo_requests=int(scale["slo_requests"]),
            warmup_requests=int(scale.get("warmup_requests", 8)),
            # The SLO is the p99_ttft criterion's threshold: one number, in one place.
            slo_ttft_ms=next(
                c.threshold_for(device_class) or 0.0 for c in spec.criteria if c.name == "p99_ttft"
            ),
            tie_margin=float(scale.get("tie_margin", 1e-3)),
            load_timeout_s=float(scale.get("load_timeout_s", 120)),
            request_timeout_s=float(scale.get("request_timeout_s", 60)),
            run_timeout_s=float(scale.get("run_timeout_s", 180)),
            threads=int(scale.get("threads", 0)),
        )

    def engine_settings(self, *, device: str) -> dict[str, Any]:
        """What both children build their engine with: the same memory, the same limits."""
        return {
            "num_blocks": self.num_blocks,
            "block_size": self.block_size,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_model_len": self.max_model_len,
            "device": device,
            "dtype": self.dtype,
        }


def _range(value: Any) -> tuple[int, int]:
    low, high = (int(v) for v in value)
    if not 1 <= low <= high:
        raise ValueError(f"a token range must be [low, high] with 1 <= low <= high, not {value}")
    return low, high


def draw_workload(seed: str, options: Options, *, count: int, salt: int = 0) -> Workload:
    """Prompts (token ids) cut from held-out text at secret offsets, and how many tokens each
    request asks for (generated to the end: ignore_eos, as vLLM's benchmark does)."""
    return sample_workload(
        count,
        seed=[int(seed, 16), salt],
        prompt_tokens=options.prompt_tokens,
        output_tokens=options.output_tokens,
    )


@dataclass(frozen=True)
class Comparison:
    exact: int  # requests whose tokens equal the reference's, every one
    ties: int  # requests that diverged first where the reference's top two were within margin
    wrong: list[dict[str, Any]]  # the first few requests that diverged elsewhere
    wrong_count: int = 0

    @property
    def correct_fraction(self) -> float:
        total = self.exact + self.ties + self.wrong_count
        return (self.exact + self.ties) / total if total else 0.0


def compare_tokens(
    got: list[list[int] | None],
    reference: list[dict[str, Any]],
    *,
    tie_margin: float,
    show: int = 5,
) -> Comparison:
    """Each request's generated tokens against the reference's greedy tokens (generated alone,
    unbatched). Batched matmuls round differently from unbatched ones, so where the reference's
    top two logits are closer than `tie_margin` either token is right, and the sequences are not
    compared past that point. A request that failed (None) is wrong."""
    exact = ties = 0
    wrong: list[dict[str, Any]] = []
    wrong_count = 0
    for index, (tokens, ref) in enumerate(zip(got, reference, strict=True)):
        want, margins = ref["token_ids"], ref["margins"]
        if tokens is None:
            wrong_count += 1
            if len(wrong) < show:
                wrong.append({"request": index, "problem": "no tokens (the request failed)"})
            continue
        position = next(
            (i for i, (a, b) in enumerate(zip(tokens, want, strict=False)) if a != b), None
        )
        if position is None and len(tokens) == len(want):
            exact += 1
        elif position is not None and margins[position] < tie_margin:
            ties += 1
        else:
            wrong_count += 1
            if len(wrong) < show:
                if position is None:
                    problem = f"{len(tokens)} tokens where {len(want)} were asked for"
                    wrong.append({"request": index, "problem": problem})
                else:
                    wrong.append(
                        {
                            "request": index,
                            "position": position,
                            "expected": want[position],
                            "got": tokens[position],
                            "problem": (
                                f"token {position} is {tokens[position]}, the model's greedy "
                                f"choice is {want[position]} (margin {margins[position]:.3g})"
                            ),
                        }
                    )
    return Comparison(exact=exact, ties=ties, wrong=wrong, wrong_count=wrong_count)
