"""Trusted code inside the `quantization` lab's sandboxed children (runner.harness.serve's
`--adapter`). The same adapter serves the learner's `quantize` and, in a clean child that
loads no learner code, the grader's own (runner.graders.quantization_reference), so both are
loaded, called and measured by exactly the same code.

Requests ("op"):
- "load": load the model (the committed trained one, or random weights of a large shape),
  call `quantize(model, method, group_size=..., calibration=...)` on it, check the shape is
  unchanged and count real bytes: of the returned module's tensors, and of every tensor
  alive in the process (a copy of the full-precision weights kept anywhere counts).
- "log_probs": next-token log-probs of the loaded model on the grader's windows, as an array;
  the grader compares them with the clean child's in the worker.
- "decode": prefill and decode speed of the loaded model (runner.graders.quantization_measure).

Nothing this process says about quality is believed: the worker computes every quality number
from the arrays, against the clean child's. The byte counts are taken here, with references
bound before the learner's code loads, and an audit hook reports any read of the committed
weight files after loading (a forward that reloads the full-precision weights from disk).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from runner.graders import quantization_measure as measure
from runner.llm.loading import WEIGHTS_DIR

_STATE: dict[str, Any] = {}
_WATCH = {"on": False, "opened": []}
_WEIGHTS = os.path.realpath(WEIGHTS_DIR)
_realpath = os.path.realpath


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Note any file under the weights folder opened while learner code may run."""
    if event != "open" or not _WATCH["on"] or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    opened = _WATCH["opened"]
    if isinstance(path, str) and _realpath(path).startswith(_WEIGHTS) and len(opened) < 5:
        opened.append(os.path.basename(path))


sys.addaudithook(_audit)  # audit hooks cannot be removed: the learner's code cannot undo it


def serve_model(function: Callable[..., Any], request: dict[str, Any]) -> Any:
    op = request.get("op")
    if op == "load":
        return _load(function, request)
    if op == "log_probs":
        return _log_probs(request)
    if op == "decode":
        return _decode(request)
    raise ValueError(f"unknown request {op!r}")


def _load(function: Callable[..., Any], request: dict[str, Any]) -> dict[str, Any]:
    _STATE.clear()
    device = torch.device(str(request["device"]))
    dtype = getattr(torch, str(request["dtype"]))
    model = _load_model(str(request["model"]), device=device, dtype=dtype)
    before = measure.architecture(model)
    full_bytes = measure.storage_bytes(measure.module_tensors(model))
    outside = _outside_layer_bytes(model)
    calibration = torch.tensor(request.get("calibration") or [], dtype=torch.long).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _WATCH["on"] = True
    try:
        returned = function(
            model,
            str(request["method"]),
            group_size=int(request["group_size"]),
            calibration=calibration,
        )
    finally:
        _WATCH["on"] = False
    del model, calibration
    report: dict[str, Any] = {
        "method": request["method"],
        "model": request["model"],
        "full_precision_bytes": full_bytes,
        "outside_layers_bytes": outside,
        "layer_bytes": full_bytes - outside,
        "weight_files_opened": list(_WATCH["opened"]),
    }
    if not isinstance(returned, torch.nn.Module):
        report["problem"] = f"quantize returned a {type(returned).__name__}, not the model"
        return report
    after = measure.architecture(returned)
    differences = measure.changed(before, after)
    if differences:
        report["problem"] = "the model's architecture changed: " + "; ".join(differences)
        return report
    returned.eval()
    report["model_bytes"] = measure.storage_bytes(measure.module_tensors(returned))
    report["process_tensor_bytes"] = measure.live_tensor_bytes()
    if device.type == "cuda":
        report["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    report["vocab_size"] = after["vocab_size"]
    _STATE.update(model=returned, device=device, vocab=after["vocab_size"])
    return report


def _load_model(name: str, *, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    if name == "trained":
        from runner.llm import load_model

        return load_model(device=str(device), dtype=dtype)
    from runner.llm.architecture import random_model

    # Speed at a real model's shapes, random weights: never scored for quality.
    return random_model(name.removeprefix("random:"), device=str(device), dtype=dtype)


def _outside_layer_bytes(model: torch.nn.Module) -> int:
    """Bytes of what the lab leaves in full precision: everything outside the decoder layers
    (the tied embedding and LM head, the final norm, rotary buffers)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    inside = measure.storage_bytes(measure.module_tensors(layers)) if layers is not None else 0
    return measure.storage_bytes(measure.module_tensors(model)) - inside


def _loaded() -> Any:
    if "model" not in _STATE:
        raise RuntimeError("no quantized model is loaded (its load failed)")
    return _STATE["model"]


def _log_probs(request: dict[str, Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
    model = _loaded()
    windows = torch.tensor(request["windows"], dtype=torch.long).to(_STATE["device"])
    _WATCH["on"] = True
    try:
        result = measure.log_probs(model, windows)
    finally:
        _WATCH["on"] = False
    finite = bool(torch.isfinite(result).all())
    info = {"shape": list(result.shape), "finite": finite, "weight_files_opened": _WATCH["opened"]}
    return info, [result.numpy().astype(np.float32, copy=False)]


def _decode(request: dict[str, Any]) -> dict[str, Any]:
    model = _loaded()
    shape = {
        "batch": int(request["batch"]),
        "prompt": int(request["prompt"]),
        "new_tokens": int(request["new_tokens"]),
        "reps": int(request["reps"]),
        "vocab": int(_STATE["vocab"]),
    }
    _WATCH["on"] = True
    try:
        speed = measure.decode_speed(model, **shape)
        if request.get("graphs"):
            speed.update(measure.graphed_decode_speed(model, **shape))
        return speed
    finally:
        _WATCH["on"] = False
