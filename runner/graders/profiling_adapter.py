"""Trusted code inside the `profiling` lab's sandboxed children (runner.harness.serve's
`--adapter`): build the seed's model, call the served function on it, and hand back plain
JSON data (and the learner's trace file's bytes).

`profile_candidate` runs in the learner's child, imported before the learner's code. It
empties the request before the learner's function runs, so the only thing left in the process
that knows where the bottleneck is, is the model itself: the learner has to measure it. Its
answer is turned into plain JSON here (tensors and numpy numbers become floats) and judged by
the grader in the worker (runner.graders.profiling_scoring), never here: nothing this process
says about itself is believed.

`measure_truth` runs in a clean child that loads no learner code: it builds the same model
and measures it with runner.graders.profiling_truth.measure.
"""

from __future__ import annotations

import gzip
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

from runner.graders.profiling_model import ModelConfig, build_model, make_inputs

MAX_ITEMS = 64  # entries of any list or dict in an answer; more is not an answer to this lab
MAX_DEPTH = 4


def profile_candidate(function: Callable[..., Any], request: dict[str, Any]) -> Any:
    config = ModelConfig.from_dict(request["config"])
    device, k = str(request["device"]), int(request["k"])
    max_bytes = int(request["trace_max_bytes"])
    request.clear()  # serve.py keeps the request; the learner's code must not find it there
    model = build_model(config, device=device)
    inputs = make_inputs(config, device=device)
    del config
    folder = tempfile.mkdtemp(prefix="profile-")
    trace_path = os.path.join(folder, "trace.json")
    answer = function(model, inputs, k=k, trace_path=trace_path)
    try:
        plain, problem = plain_json(answer), None
    except ValueError as exc:
        plain, problem = None, str(exc)
    trace, data = read_trace(trace_path, max_bytes=max_bytes)
    arrays = []
    if data is not None:
        import numpy as np

        arrays = [np.frombuffer(data, dtype=np.uint8)]
    return {"answer": plain, "problem": problem, "trace": trace}, arrays


def measure_truth(function: Callable[..., Any], request: dict[str, Any]) -> Any:
    config = ModelConfig.from_dict(request["config"])
    device = str(request["device"])
    model = build_model(config, device=device)
    inputs = make_inputs(config, device=device)
    result = function(
        model,
        inputs,
        device=device,
        reps=int(request["reps"]),
        warmup=int(request["warmup"]),
    )
    return result


def read_trace(path: str, *, max_bytes: int) -> tuple[dict[str, Any], bytes | None]:
    """({"written", "bytes", "problem", "pid"}, the file gzip'd or None)."""
    if not os.path.isfile(path):
        return {"written": False, "bytes": 0, "problem": "no file was written at trace_path"}, None
    size = os.path.getsize(path)
    if size > max_bytes:
        problem = (
            f"the trace is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB cap: profile "
            "fewer forward passes, or leave record_shapes and with_stack off"
        )
        return {"written": True, "bytes": size, "problem": problem}, None
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    # The process id lets the grader check the trace was recorded here, in this call.
    info = {"written": True, "bytes": len(data), "problem": None, "pid": os.getpid()}
    return info, gzip.compress(data, compresslevel=6, mtime=0)


def plain_json(value: Any, depth: int = 0) -> Any:
    """The answer as JSON data: dicts with string keys, lists, strings, None, bools and
    finite numbers (a 0-d tensor or a numpy number becomes a Python number). Raises
    ValueError, in words for the learner, for anything else."""
    if depth > MAX_DEPTH:
        raise ValueError("the answer is nested deeper than this lab's format")
    if value is None or isinstance(value, bool | str):
        return value if not isinstance(value, str) else value[:200]
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"the answer holds the number {value}")
        return value
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"a dict in the answer has {len(value)} entries")
        return {str(key)[:100]: plain_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"a list in the answer has {len(value)} entries")
        return [plain_json(item, depth + 1) for item in value]
    number = _number(value)
    if number is not None:
        return plain_json(number, depth)
    raise ValueError(f"the answer holds a {type(value).__name__}, which is not JSON data")


def _number(value: Any) -> int | float | None:
    """A 0-d (or one-element) tensor or a numpy scalar as a Python number, else None."""
    item = getattr(value, "item", None)
    numel = getattr(value, "numel", None)
    size = getattr(value, "size", None)
    one = (callable(numel) and numel() == 1) or (isinstance(size, int) and size == 1)
    if callable(item) and one:
        result = item()
        if isinstance(result, bool | int | float):
            return result
    return None
