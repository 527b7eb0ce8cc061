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


def _model_device(model: nn.Module) -> torch.device:
    device = next(iter(model.parameters()), torch.empty(0)).device
    for buffer in model.buffers():
        return buffer.device
    return device


def _prompt_ids(batch: int, prompt: int, vocab: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch * 7919 + prompt)
    return torch.randint(0, vocab, (batch, prompt), generator=generator).to(device)


@torch.no_grad()
def decode_speed(
    model: nn.Module, *, batch: int, prompt: int, new_tokens: int, reps: int, vocab: int
) -> dict[str, Any]:
    """Greedy generation with the KV cache, timed by phase (device synchronised at each
    boundary): the prefill of `prompt` tokens, then `new_tokens` single-token steps. Medians
    over `reps` runs after one warm-up run."""
    device = _model_device(model)
    ids = _prompt_ids(batch, prompt, vocab, device)
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


# The graphed decode's tokens must agree with the same model's eager decode on at least this
# share of (step, sequence) pairs, each step fed the eager input. At batch 1 they agreed
# exactly in every run on an H100; at batch 32 on random Llama-2-7B weights, 0.938-0.947,
# where near-ties are common and the captured matmuls may round differently (2026-11-28). A
# model that does something else while it is being captured agrees on almost nothing.
GRAPH_AGREEMENT = 0.9


@torch.no_grad()
def graphed_decode_speed(
    model: nn.Module, *, batch: int, prompt: int, new_tokens: int, reps: int, vocab: int
) -> dict[str, Any]:
    """Decode tokens/s with one decode step captured in a CUDA graph and replayed for every
    token, from a static KV cache (CUDA only).

    Why: eager decode at batch 1 is launch-bound. The host's Python issues hundreds of small
    kernels per token and the GPU waits for it, so eager tokens/s measures the host, and on a
    busy node the other jobs on it, more than the model's bytes. A replayed graph launches the
    whole step at once, so its time is the GPU's.

    The graphed tokens are checked against the same model's eager decode on the same cache:
    a model that does something else while it is being captured gets no speed. A model whose
    step cannot be captured (it reads a value back to the host, or changes Python state each
    step) gets none either; `graph_problem` says why."""
    device = _model_device(model)
    if device.type != "cuda":
        return {"graph_problem": "CUDA graphs need a CUDA device"}
    try:
        return _graphed(
            model,
            batch=batch,
            prompt=prompt,
            new_tokens=new_tokens,
            reps=reps,
            ids=_prompt_ids(batch, prompt, vocab, device),
            device=device,
        )
    except Exception as exc:  # noqa: BLE001 - the learner's model, captured: anything can fail
        _recover_from_failed_capture(device)
        return {"graph_problem": f"{type(exc).__name__}: {str(exc)[:300]}"}
    finally:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _recover_from_failed_capture(device: torch.device) -> None:
    """A capture that failed (a read-back to the host, say) leaves torch's default CUDA
    generator marked as capturing, and every later random op on the device then fails
    ("Offset increment outside graph capture"): the next method's random weights would not
    load. A capture that succeeds clears the mark, so capture a trivial one."""
    try:
        scratch = torch.zeros(1, device=device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            scratch.add_(1)
        del graph
    except Exception:  # noqa: BLE001, S110 - best effort; the caller reports the first failure
        pass


def _static_cache(model: nn.Module, *, batch: int, length: int, device: torch.device) -> Any:
    from transformers import StaticCache

    try:  # transformers 4.56 and later: sized on first use
        return StaticCache(config=model.config, max_cache_len=length)
    except TypeError:  # earlier: sized up front
        dtype = next(model.parameters()).dtype
        return StaticCache(
            config=model.config,
            max_batch_size=batch,
            max_cache_len=length,
            device=device,
            dtype=dtype,
        )


def _graphed(
    model: nn.Module,
    *,
    batch: int,
    prompt: int,
    new_tokens: int,
    reps: int,
    ids: torch.Tensor,
    device: torch.device,
) -> dict[str, Any]:
    cache = _static_cache(model, batch=batch, length=prompt + new_tokens + 1, device=device)
    token = torch.zeros((batch, 1), dtype=torch.long, device=device)

    def prefill() -> None:
        # In place, so the graph's pointers into the cache and `token` stay valid.
        cache.reset()
        out = model(ids, past_key_values=cache, use_cache=True)
        token.copy_(out.logits[:, -1].argmax(-1, keepdim=True))

    def step() -> None:
        logits = model(token, past_key_values=cache, use_cache=True).logits
        token.copy_(logits[:, -1].argmax(-1, keepdim=True))

    # The eager decode on a side stream: the reference tokens, and the warm-up that capture
    # needs (cuBLAS workspaces, lazily built buffers) done outside the capture.
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        prefill()
        inputs, eager = [], []
        for _ in range(new_tokens):
            inputs.append(token.clone())
            step()
            eager.append(token.clone())
    torch.cuda.current_stream(device).wait_stream(side)

    prefill()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    # The check, untimed: each replayed step is fed the eager decode's input for that step
    # (teacher forcing), so one near-tie flipped by rounding costs one token, not the rest
    # of its sequence.
    prefill()
    replayed = []
    for given in inputs:
        token.copy_(given)
        graph.replay()
        replayed.append(token.clone())
    decodes = []
    for _ in range(reps):
        prefill()
        _sync(device)
        start = _perf_counter()
        for _ in range(new_tokens):
            graph.replay()
        _sync(device)
        decodes.append(_perf_counter() - start)
    agreement = float((torch.cat(replayed, dim=1) == torch.cat(eager, dim=1)).float().mean().item())
    del graph
    if agreement < GRAPH_AGREEMENT:
        return {
            "graph_problem": (
                f"the graphed decode's tokens agree with the eager decode's on only "
                f"{agreement:.0%} of steps: the model does something else while captured"
            ),
            "graph_token_agreement": round(agreement, 4),
        }
    decode_s = statistics.median(decodes)
    return {
        "graphed_decode_tokens_per_s": round(batch * new_tokens / decode_s, 2),
        "graph_token_agreement": round(agreement, 4),
    }
