"""What the quantization lab's adapter measures inside a child: the real bytes a model holds,
the bytes of every tensor alive in the process, the model's shape, next-token log-probs on
windows, and prefill and decode speed. Plain torch; imported before any learner code.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

# Bound before the learner's code loads, so that replacing the module attributes later does
# not change what this module calls (defence in depth: runner/harness/serve.py's TamperWatch
# watches the clocks).
_get_objects = gc.get_objects
_collect = gc.collect
_perf_counter = time.perf_counter
_is_tensor = torch.is_tensor


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Real bytes of the distinct storages behind `tensors`: a view counts its whole storage,
    a storage shared by two tensors (a tied embedding) counts once."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        if tensor.device.type == "meta":
            continue
        try:
            storage = tensor.untyped_storage()
            key, size = (str(tensor.device), storage.data_ptr()), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without one storage
            key, size = (str(tensor.device), id(tensor)), tensor.numel() * tensor.element_size()
        seen[key] = max(seen.get(key, 0), size)
    return sum(seen.values())


def module_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every tensor the module holds: parameters, buffers, and tensors kept as plain
    attributes of any submodule (directly, or in a list, tuple or dict), which
    parameters() and buffers() do not list."""
    found: list[torch.Tensor] = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        for value in vars(module).values():
            found.extend(_tensors_in(value))
    return found


def _tensors_in(value: Any, depth: int = 0) -> list[torch.Tensor]:
    if _is_tensor(value):
        return [value]
    if depth >= 2:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for item in value[:10_000] for t in _tensors_in(item, depth + 1)]
    return []


def live_tensor_bytes() -> int:
    """Real bytes of every tensor alive in this process (after a collection): what the
    returned model holds plus anything kept elsewhere, a module-level cache included."""
    _collect()
    return storage_bytes(o for o in _get_objects() if _is_tensor(o))


def architecture(model: nn.Module) -> dict[str, Any]:
    """What must not change when a model is quantized: its config's shape and its embedding."""
    config = getattr(model, "config", None)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embed, "weight", None)
    return {
        "class": type(model).__name__,
        "vocab_size": getattr(config, "vocab_size", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "layers": getattr(config, "num_hidden_layers", None),
        "decoder_layers": len(getattr(getattr(model, "model", None), "layers", []) or []),
        "embedding": list(weight.shape) if _is_tensor(weight) else None,
    }


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [
        f"{key} {before[key]} -> {after.get(key)}"
        for key in before
        if after.get(key) != before[key]
    ]


@torch.no_grad()
def log_probs(model: nn.Module, windows: torch.Tensor, *, batch: int = 8) -> torch.Tensor:
    """Next-token log-probabilities, float32 [windows, tokens, vocab]."""
    chunks = []
    for start in range(0, len(windows), batch):
        logits = model(windows[start : start + batch]).logits
        chunks.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(chunks)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_speed(
    model: nn.Module, *, batch: int, prompt: int, new_tokens: int, reps: int, vocab: int
) -> dict[str, Any]:
    """Greedy generation with the KV cache, timed by phase (device synchronised at each
    boundary): the prefill of `prompt` tokens, then `new_tokens` single-token steps. Medians
    over `reps` runs after one warm-up run."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    for buffer in model.buffers():
        device = buffer.device
        break
    generator = torch.Generator().manual_seed(batch * 7919 + prompt)
    ids = torch.randint(0, vocab, (batch, prompt), generator=generator).to(device)
    prefills, decodes = [], []
    for rep in range(reps + 1):
        _sync(device)
        start = _perf_counter()
        out = model(ids, use_cache=True)
        _sync(device)
        prefilled = _perf_counter()
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(new_tokens):
            out = model(token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        done = _perf_counter()
        if rep:  # the first run warms up (allocations, kernel selection)
            prefills.append(prefilled - start)
            decodes.append(done - prefilled)
    decode_s = statistics.median(decodes)
    return {
        "batch": batch,
        "prompt_tokens": prompt,
        "new_tokens": new_tokens,
        "reps": reps,
        "prefill_ms": round(statistics.median(prefills) * 1e3, 3),
        "decode_tokens_per_s": round(batch * new_tokens / decode_s, 2) if decode_s > 0 else None,
    }
