"""The grader's own measurement of the `profiling` lab's model: per-module time shares and
the memory breakdown. Trusted code, run in a clean sandboxed child that loads no learner code
(runner.graders.profiling serves `measure` through runner.graders.profiling_adapter).

Definitions (the notebook teaches the same ones; docs/labs/profiling.md):

- a module's **time** is the wall-clock time of its forward with the device synchronised at
  its start and end (on CPU there is nothing to synchronise); its **share** is that time over
  the whole forward's, measured the same way. Leaf modules only (no children): they do the
  work. The share is the median over several forwards, so a forward that the OS interrupted
  does not move it;
- **parameters**: bytes of model.parameters() (a tied weight counted once);
- **kv_cache**: bytes of the attention caches (the `k_cache` and `v_cache` buffers);
- **activations**: the peak of bytes allocated during one no-grad forward above what was
  allocated before it: torch.cuda.max_memory_allocated() on a GPU; on CPU the running total of
  the allocator's events that torch.profiler records with profile_memory=True;
- **allocator_reserve** (GPU): bytes the caching allocator holds but no tensor uses, at the
  forward's peak: max_memory_reserved() - max_memory_allocated() after empty_cache();
- **workspace** (GPU): bytes the first forward leaves allocated once its output is freed
  (cuBLAS keeps its workspace): memory_allocated() after minus before, from a cleared state.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import Any

# Taken at import, before anything else in this process could replace it.
_perf_counter_ns = time.perf_counter_ns

MEMORY_EVENT = "[memory]"


def leaf_modules(model: Any) -> list[tuple[str, Any]]:
    """(qualified name, module) of every module without children, in model order."""
    return [(name, m) for name, m in model.named_modules() if name and not any(m.children())]


def kv_cache_bytes(model: Any) -> int:
    return sum(
        b.numel() * b.element_size()
        for name, b in model.named_buffers()
        if name.rsplit(".", 1)[-1] in ("k_cache", "v_cache")
    )


def parameter_bytes(model: Any) -> int:
    # parameters() yields a shared tensor once: the tied LM head is not counted twice.
    return sum(p.numel() * p.element_size() for p in model.parameters())


def measure(model: Any, inputs: Any, *, device: str, reps: int, warmup: int) -> dict[str, Any]:
    """Per-leaf time shares (median over `reps` forwards) and the memory breakdown."""
    import torch

    cuda = device == "cuda"
    memory: dict[str, Any] = {
        "parameters": parameter_bytes(model),
        "kv_cache": kv_cache_bytes(model),
    }
    with torch.no_grad():
        if cuda:
            memory["workspace"] = _first_forward_workspace(model, inputs)
        for _ in range(warmup):
            model(inputs)
        if cuda:
            memory.update(_cuda_peak(model, inputs))
        else:
            memory["activations"] = cpu_activation_peak(model, inputs)
            memory["allocator_reserve"] = None
            memory["workspace"] = None
        times = _leaf_times(model, inputs, reps=reps, cuda=cuda)
    totals = times.pop("")
    shares = {
        name: sorted(t / total for t, total in zip(samples, totals, strict=True))
        for name, samples in times.items()
    }
    return {
        "leaves": {
            name: {
                "share": statistics.median(values),
                "low": values[len(values) // 4],
                "high": values[(3 * len(values)) // 4],
            }
            for name, values in shares.items()
        },
        "forward_ms": statistics.median(totals) / 1e6,
        "reps": reps,
        "memory": memory,
    }


def _leaf_times(model: Any, inputs: Any, *, reps: int, cuda: bool) -> dict[str, list[int]]:
    """ns per leaf per forward ("" is the whole model), each boundary synchronised."""
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    modules = [("", model), *leaf_modules(model)]
    times: dict[str, list[int]] = {name: [] for name, _ in modules}
    started: dict[str, int] = {}

    def before(name: str):
        def hook(module: Any, args: Any) -> None:
            sync()
            started[name] = _perf_counter_ns()

        return hook

    def after(name: str):
        def hook(module: Any, args: Any, output: Any) -> None:
            sync()
            times[name][-1] += _perf_counter_ns() - started[name]

        return hook

    handles = []
    try:
        for name, module in modules:
            handles.append(module.register_forward_pre_hook(before(name)))
            handles.append(module.register_forward_hook(after(name)))
        for _ in range(reps):
            for samples in times.values():
                samples.append(0)
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return times


def cpu_activation_peak(model: Any, inputs: Any) -> int:
    """Peak bytes the CPU allocator handed out during one forward, above the level at its
    start, from torch.profiler's memory events (read from its Chrome trace)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("forward"):
            output = model(inputs)
        del output
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as handle:
            events = json.load(handle)["traceEvents"]
    return peak_in_range(events, "forward")


def peak_in_range(events: list[dict[str, Any]], range_name: str) -> int:
    """The highest running total of the memory events' bytes inside the first event named
    `range_name`, counted from zero at its start."""
    span = next(
        (e for e in events if e.get("name") == range_name and e.get("ph") == "X"),
        None,
    )
    if span is None:
        raise ValueError(f"no {range_name!r} range in the trace")
    start, end = float(span["ts"]), float(span["ts"]) + float(span["dur"])
    running = peak = 0
    allocations = sorted(
        (float(e["ts"]), int(e["args"]["Bytes"]))
        for e in events
        if e.get("name") == MEMORY_EVENT and start <= float(e.get("ts", -1)) <= end
    )
    for _, change in allocations:
        running += change
        peak = max(peak, running)
    return peak


def _cuda_peak(model: Any, inputs: Any) -> dict[str, int]:
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    output = model(inputs)
    torch.cuda.synchronize()
    peak_allocated = torch.cuda.max_memory_allocated()
    peak_reserved = torch.cuda.max_memory_reserved()
    del output
    return {
        "activations": peak_allocated - before,
        "allocator_reserve": peak_reserved - peak_allocated,
    }


def _first_forward_workspace(model: Any, inputs: Any) -> int:
    import torch

    torch.cuda.synchronize()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    output = model(inputs)
    del output
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() - before
