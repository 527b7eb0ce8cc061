"""The `quantization` lab's definition for its grader: the options read from lab.toml, the
held-out and calibration windows the secret seed draws, and the names the adapter and the
grader share.

runner.graders.quantization grades with them; runner.graders.quantization_adapter runs in
both sandboxed children (the learner's and the grader's clean one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.labspec import LabSpec

ADAPTER = "runner.graders.quantization_adapter:serve_model"
# The clean child serves the grader's own quantizer: "none" is the full-precision baseline,
# "int4" plain round-to-nearest, which the calibrated method must beat.
GRADER_QUANTIZER = "runner.graders.quantization_reference:quantize"
METHODS = ("int8", "int4", "int4-calibrated")
# What each method's metrics are called in lab.toml ("int4-calibrated" -> "calibrated_...").
METRIC_PREFIX = {"int8": "int8", "int4": "int4", "int4-calibrated": "calibrated"}


@dataclass(frozen=True)
class Options:
    group_size: int
    dtype: str  # the precision the committed weights are stored in: the baseline's
    eval_windows: int
    eval_tokens: int
    calibration_windows: int
    calibration_tokens: int
    calibration_documents: int
    decode_batches: tuple[int, ...]
    decode_prompt: int
    decode_tokens: int
    decode_reps: int
    speed_model: str  # "trained", or a shape of runner.llm.architecture.LARGE_SHAPES
    # Also decode with each step replayed from a CUDA graph (GPU only); the speed criteria
    # then compare graphed tokens/s (runner.graders.quantization_measure.graphed_decode_speed).
    decode_graphs: bool
    load_timeout_s: float
    call_timeout_s: float
    threads: int

    @classmethod
    def from_spec(cls, spec: LabSpec, device_class: str) -> Options:
        options = dict(spec.options)
        scale = dict(options.get("scale", {}).get(device_class, {}))
        return cls(
            group_size=int(options.get("group_size", 64)),
            dtype=str(options.get("dtype", "bfloat16")),
            eval_windows=int(scale.get("eval_windows", 8)),
            eval_tokens=int(scale.get("eval_tokens", 128)),
            calibration_windows=int(scale.get("calibration_windows", 16)),
            calibration_tokens=int(scale.get("calibration_tokens", 256)),
            calibration_documents=int(scale.get("calibration_documents", 400)),
            decode_batches=tuple(int(b) for b in scale.get("decode_batches", (1, 4))),
            decode_prompt=int(scale.get("decode_prompt", 32)),
            decode_tokens=int(scale.get("decode_tokens", 16)),
            decode_reps=int(scale.get("decode_reps", 3)),
            speed_model=str(scale.get("speed_model", "trained")),
            decode_graphs=bool(scale.get("decode_graphs", False)),
            load_timeout_s=float(options.get("load_timeout_s", 120)),
            call_timeout_s=float(scale.get("call_timeout_s", 120)),
            threads=int(scale.get("threads", 0)),
        )


@dataclass(frozen=True)
class Windows:
    """Token windows, each a list of ids: held-out text to score, training text to calibrate."""

    evaluation: list[list[int]]
    calibration: list[list[int]]


def draw_windows(seed: str, options: Options) -> Windows:
    """Windows at secret offsets: held-out text the model never trained on (the whole split,
    tokenized), and calibration windows from a secret sample of training documents (the
    learner's method may look at those; never at the held-out text)."""
    from runner.llm import corpus
    from runner.llm import tokenizer as tokenization

    rng = np.random.default_rng(np.random.SeedSequence(int(seed, 16)))
    documents = corpus.read_corpus()
    tokenizer = tokenization.load_tokenizer()
    heldout = tokenization.encode_documents(tokenizer, corpus.texts(documents, "heldout"))
    train = corpus.texts(documents, "train")
    chosen = rng.choice(
        len(train), size=min(options.calibration_documents, len(train)), replace=False
    )
    train_stream = tokenization.encode_documents(tokenizer, [train[i] for i in sorted(chosen)])
    return Windows(
        evaluation=_windows(rng, heldout, options.eval_windows, options.eval_tokens),
        calibration=_windows(
            rng, train_stream, options.calibration_windows, options.calibration_tokens
        ),
    )


def _windows(
    rng: np.random.Generator, stream: list[int], count: int, length: int
) -> list[list[int]]:
    if len(stream) <= length:
        raise ValueError(f"a stream of {len(stream)} tokens has no window of {length}")
    starts = rng.integers(0, len(stream) - length, size=count)
    return [list(stream[s : s + length]) for s in starts.tolist()]


def describe_request(
    options: Options, method: str, *, calibration: list[list[int]], device: str
) -> dict[str, Any]:
    """The 'load' request both children get: load the model, quantize it with `method`."""
    return {
        "op": "load",
        "method": method,
        "group_size": options.group_size,
        "dtype": options.dtype,
        "device": device,
        "calibration": calibration,
        "model": "trained",
    }
