"""The `profiling` lab's judgement, in the worker: the learner's answer (plain JSON from the
sandbox) against the grader's own measurement, and the learner's trace file.

Every check here reads data, never objects: the answer was turned into JSON in the learner's
child (runner.graders.profiling_adapter) and is validated again field by field. Each metric
comes with a sentence saying what the learner said and what the grader measured; the grader
appends it to the criterion's explanation, so a failed criterion shows both.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

from runner.graders.profiling_model import CAUSES

MEMORY_KEYS = ("parameters", "activations", "kv_cache", "allocator_reserve", "workspace")
# The names a trace of this model must contain: its first operation and its matmuls.
TRACE_EMBEDDING = "aten::embedding"
TRACE_MATMULS = ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul")
MIB = 1 << 20

FORMAT = (
    'Return {"slowest": [{"module": name, "share": fraction, "cause": "unfused" | "shape" | '
    '"host_sync" | None}, ... k items], "memory": {"parameters": bytes, "activations": bytes, '
    '"kv_cache": bytes, "allocator_reserve": bytes or None, "workspace": bytes or None}}.'
)


@dataclass(frozen=True)
class Listed:
    module: str
    share: float | None
    cause: str | None


@dataclass
class Answer:
    slowest: list[Listed] | None = None
    memory: dict[str, int | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_answer(raw: Any, *, k: int) -> Answer:
    """The learner's answer as typed fields; each defect is a sentence in `problems`, and the
    part it spoils is left None (so the other parts are still graded)."""
    answer = Answer()
    if not isinstance(raw, dict):
        answer.problems.append(f"the answer is a {_kind(raw)}, not a dict. {FORMAT}")
        return answer
    answer.slowest = _read_slowest(raw.get("slowest"), k, answer.problems)
    memory = raw.get("memory")
    if not isinstance(memory, dict):
        answer.problems.append(f'"memory" is a {_kind(memory)}, not a dict. {FORMAT}')
        memory = {}
    for key in MEMORY_KEYS:
        value = memory.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float | type(None)):
            answer.problems.append(f'memory["{key}"] is a {_kind(value)}, not a number of bytes')
            value = None
        answer.memory[key] = None if value is None else int(value)
    return answer


def _read_slowest(raw: Any, k: int, problems: list[str]) -> list[Listed] | None:
    if not isinstance(raw, list) or not raw:
        problems.append(f'"slowest" is a {_kind(raw)}, not a list of {k} modules. {FORMAT}')
        return None
    if len(raw) != k:
        problems.append(f'"slowest" lists {len(raw)} modules; the lab asks for k = {k}')
    items = []
    for number, item in enumerate(raw[:k], start=1):
        if not isinstance(item, dict) or not isinstance(item.get("module"), str):
            problems.append(f'"slowest" item {number} is not a dict with a "module" name')
            items.append(Listed(module="", share=None, cause=None))
            continue
        share = item.get("share")
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            problems.append(f'"slowest" item {number} has share {share!r}, not a fraction 0-1')
            share = None
        cause = item.get("cause")
        if cause is not None and cause not in CAUSES:
            problems.append(
                f'"slowest" item {number} has cause {cause!r}; use one of {", ".join(CAUSES)} '
                "or None"
            )
            cause = None
        items.append(Listed(module=item["module"], share=share, cause=cause))
    return items


@dataclass(frozen=True)
class Truth:
    """The grader's measurement: median share per leaf module, the planted cause, memory."""

    shares: dict[str, float]
    slowest: str
    cause: str
    memory: dict[str, int | None]
    forward_ms: float

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.shares.items(), key=lambda item: (-item[1], item[0]))

    def top(self, k: int) -> list[tuple[str, float]]:
        return self.ranked()[:k]


def score(
    answer: Answer, truth: Truth, *, k: int, tolerance: float
) -> tuple[dict[str, float | None], dict[str, str]]:
    """(measured value per metric, a sentence per metric: what you said, what was measured)."""
    measured: dict[str, float | None] = {}
    said: dict[str, str] = {}
    top = truth.top(k)
    grader_top = ", ".join(f"{name} ({share:.2f})" for name, share in top)
    if answer.slowest is None:
        for metric in ("slowest_module_correct", "top_k_overlap", "share_error", "cause_correct"):
            measured[metric] = None
            said[metric] = f"Your answer had no usable list of modules. The grader's top {k}: "
            said[metric] += f"{grader_top}."
    else:
        listed = answer.slowest
        first = listed[0]
        measured["slowest_module_correct"] = float(first.module == truth.slowest)
        said["slowest_module_correct"] = (
            f"You named {first.module or 'nothing'} first; the grader measured {truth.slowest} "
            f"at {truth.shares[truth.slowest]:.2f} of the forward"
            + (
                f" ({first.module}: {truth.shares[first.module]:.2f})."
                if first.module in truth.shares and first.module != truth.slowest
                else "."
            )
        )
        matched, beaten = _overlap(listed, truth, tolerance)
        measured["top_k_overlap"] = matched / k
        said["top_k_overlap"] = (
            f"Your top {k}: {', '.join(item.module or '?' for item in listed)}. The grader's: "
            f"{grader_top}."
            + (f" Left out by you and ahead by more than {tolerance:g}: " if beaten else "")
            + ", ".join(beaten)
            + ("." if beaten else "")
        )
        measured["share_error"], said["share_error"] = _share_error(listed, truth)
        measured["cause_correct"] = float(first.cause == truth.cause)
        said["cause_correct"] = (
            f"You said {first.cause!r} for {first.module or 'your first module'}; the grader "
            f"planted {truth.cause!r} in {truth.slowest}."
        )
    for key, metric, relative in (
        ("parameters", "parameter_bytes_error", False),
        ("kv_cache", "kv_cache_bytes_error", False),
        ("activations", "activation_bytes_error", True),
        ("allocator_reserve", "allocator_reserve_error", True),
        ("workspace", "workspace_bytes_error", True),
    ):
        measured[metric], said[metric] = _memory_error(
            key, answer.memory.get(key), truth.memory.get(key), relative=relative
        )
    return measured, said


def _overlap(listed: list[Listed], truth: Truth, tolerance: float) -> tuple[int, list[str]]:
    """How many listed modules are in the true top k, ties within `tolerance` counting as in:
    a listed module counts unless some module left out has a true share more than `tolerance`
    above its own. Also the left-out modules that beat a listed one by more than that."""
    names = [item.module for item in listed]
    valid = [n for i, n in enumerate(names) if n in truth.shares and n not in names[:i]]
    left_out = {n: s for n, s in truth.shares.items() if n not in valid}
    best_left_out = max(left_out.values(), default=0.0)
    matched = sum(1 for n in valid if best_left_out - truth.shares[n] <= tolerance)
    weakest = min((truth.shares[n] for n in valid), default=0.0)
    beaten = [
        f"{n} ({s:.2f})" for n, s in truth.ranked() if n in left_out and s - weakest > tolerance
    ]
    return matched, beaten[:3]


def _share_error(listed: list[Listed], truth: Truth) -> tuple[float, str]:
    """The largest |your share - the measured share| over your modules (a name that is not a
    leaf module has a measured share of 0; a missing share counts as an error of 1)."""
    worst, worst_text = -1.0, ""
    for item in listed:
        measured = truth.shares.get(item.module, 0.0)
        error = 1.0 if item.share is None else abs(item.share - measured)
        if error > worst:
            said = "no share" if item.share is None else f"{item.share:.3f}"
            worst = error
            worst_text = (
                f"Largest error: {item.module or 'an unnamed module'}, you said {said}, the "
                f"grader measured {measured:.3f}"
                + ("" if item.module in truth.shares else " (not a leaf module of this model)")
                + "."
            )
    return round(worst, 4), worst_text


def _memory_error(
    key: str, said: int | None, truth: int | None, *, relative: bool
) -> tuple[float | None, str]:
    if truth is None:
        return None, ""
    you = "nothing" if said is None else f"{said:,} bytes"
    text = f"You said {you} for {key}; the grader measured {truth:,} bytes."
    if said is None:
        return None, text
    error = abs(said - truth)
    if relative:
        # Relative to the measurement, or to 1 MiB where that is smaller: a few bytes off a
        # near-empty reserve is no error.
        return round(100.0 * error / max(truth, MIB), 2), text
    return float(error), text


@dataclass(frozen=True)
class TraceCheck:
    valid: bool
    message: str
    events: int = 0
    artifact: dict[str, str] | None = None


def check_trace(
    info: Any,
    data: bytes | None,
    *,
    max_bytes: int,
    min_operators: int,
    name: str,
    content_type: str,
) -> TraceCheck:
    """Is the learner's file a Chrome trace that torch.profiler recorded of this model, in the
    graded call? It must hold complete operator events ("ph": "X", "aten::...") of the
    process that ran the call, at least one per leaf module (`min_operators`: a forward runs
    at least that many), among them the model's embedding and a matmul. If so, it is offered
    for download."""
    if not isinstance(info, dict) or not info.get("written"):
        return TraceCheck(False, "No trace file was written at trace_path.")
    if info.get("problem"):
        return TraceCheck(False, f"Your trace was not taken: {str(info['problem'])[:300]}.")
    if data is None:
        return TraceCheck(False, "Your trace file did not reach the grader.")
    try:
        events = gzip_json_events(data, max_bytes=max_bytes)
    except (ValueError, OSError, EOFError) as exc:
        return TraceCheck(False, f"Your trace file is not a Chrome trace: {str(exc)[:200]}.")
    pid = info.get("pid")
    operators = [
        str(e.get("name"))
        for e in events
        if e.get("ph") == "X" and str(e.get("name")).startswith("aten::") and e.get("pid") == pid
    ]
    names = set(operators)
    missing = []
    if TRACE_EMBEDDING not in names:
        missing.append(TRACE_EMBEDDING)
    if not any(m in names for m in TRACE_MATMULS):
        missing.append("a matmul (" + " / ".join(TRACE_MATMULS) + ")")
    if missing or len(operators) < min_operators:
        return TraceCheck(
            False,
            f"Your trace has {len(events)} events, {len(operators)} of them operators recorded "
            f"in the graded call (a forward of this model runs at least {min_operators})"
            + (f", and no {' or '.join(missing)}" if missing else "")
            + ": it is not a torch.profiler trace of this model, taken in your call.",
            events=len(events),
        )
    artifact = {
        "name": name,
        "content_type": content_type,
        "data_base64": base64.b64encode(data).decode("ascii"),
    }
    return TraceCheck(
        True,
        f"A Chrome trace of {len(events)} events, {len(operators)} operators.",
        len(events),
        artifact,
    )


def gzip_json_events(data: bytes, *, max_bytes: int) -> list[dict[str, Any]]:
    """The traceEvents of a gzip'd Chrome trace, never inflating more than max_bytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing only
    try:
        raw = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise ValueError(f"it is not gzip'd ({exc})") from None
    if len(raw) > max_bytes or inflater.unconsumed_tail:
        raise ValueError(f"the trace is over {max_bytes / 1e6:g} MB uncompressed")
    trace = json.loads(raw)
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise ValueError('the trace is not a JSON object with a "traceEvents" list')
    return [e for e in trace["traceEvents"] if isinstance(e, dict)]


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, float) and not math.isfinite(value):
        return "non-finite number"
    return type(value).__name__
