"""Timing inside the process that runs the code: CUDA events on a GPU, the host clock on CPU.

Why in-process at all: a GPU kernel of 100 us cannot be timed through a pipe round trip (the
trip costs more than the kernel), so the clock must sit next to the kernel, in the sandboxed
child that also runs the learner's code. That child is hostile ground, so this module:

- is imported, and captures every function it times with, *before* any learner code runs:
  the CUDA event methods of the C base class (`torch._C._CudaEventBase`, a static type that
  Python code cannot patch), the device synchronise, and `time.perf_counter_ns`. Replacing
  `torch.cuda.Event`, `torch.cuda.synchronize` or `time.perf_counter_ns` afterwards changes
  nothing measured here;
- keeps a watch list of those names and of the harness's own functions (`TamperWatch`), so a
  learner who replaces one is named in the report even though it did not work;
- records a second event after a device-wide synchronise, so work launched on another stream
  and not joined (invisible to the usual end event) shows up as a gap (`Sample.gap_ns`);
- poisons the allocator block the output will most likely come from with NaN and flushes the
  L2 cache (writes twice its size) before every timed call, so a kernel that writes only part
  of its output, or that is timed with its data already in cache, is caught or not flattered.

None of that makes in-process figures unforgeable: Python code in the same process can reach
anything. The trusted side therefore also times whole blocks of calls with its own clock
through the pipe (runner.harness.bench) and rejects event times that the wall clock
contradicts. docs/runner.md, "GPU timing", has the whole argument.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Captured at import, before any learner code can replace them.
_perf_counter_ns = time.perf_counter_ns

_MISSING = object()

# (module, dotted attribute) pairs a cheat would replace to fake a time or a comparison.
WATCHED = (
    ("time", "perf_counter"),
    ("time", "perf_counter_ns"),
    ("time", "monotonic"),
    ("time", "monotonic_ns"),
    ("time", "time"),
    ("torch", "allclose"),
    ("torch", "equal"),
    ("torch", "isclose"),
    ("torch.testing", "assert_close"),
    ("torch", "Tensor.copy_"),
    ("torch", "Tensor.cpu"),
    ("torch", "Tensor.numpy"),
    ("torch", "Tensor.__setitem__"),
    ("torch", "Tensor.index_copy_"),
    ("torch", "Tensor.fill_"),
    ("torch", "Tensor.zero_"),
    ("torch.cuda", "synchronize"),
    ("torch.cuda", "current_stream"),
    ("torch.cuda", "Event"),
    ("torch.cuda", "Event.record"),
    ("torch.cuda", "Event.elapsed_time"),
    ("torch.cuda", "Event.synchronize"),
    ("torch.cuda", "Event.query"),
    ("numpy", "allclose"),
    ("numpy", "array_equal"),
)
# Modules whose every public function is the harness: replacing any of them is tampering.
HARNESS_MODULES = (
    "runner.measure.device_timing",
    "runner.harness.serve",
    "runner.harness.protocol",
)


class TamperWatch:
    """Remembers what the watched names pointed to at snapshot time; `changed()` lists the
    ones that point elsewhere now (or vanished), by their dotted names."""

    def __init__(self, extra_modules: Sequence[str] = ()) -> None:
        self._entries: list[tuple[str, Any, str, Any]] = []
        self._modules: dict[str, Any] = {}
        for module_name, dotted in WATCHED:
            self._watch(module_name, dotted)
        for module_name in (*HARNESS_MODULES, *extra_modules):
            module = sys.modules.get(module_name)
            if module is None:
                continue
            for name, value in vars(module).items():
                ours = getattr(value, "__module__", None) == module_name
                if ours and (inspect.isfunction(value) or inspect.isclass(value)):
                    self._watch(module_name, name)
                if ours and inspect.isclass(value):
                    # Methods too: replacing DeviceBench.time_sample would fake every time.
                    for method in vars(value):
                        if not method.startswith("__"):
                            self._watch(module_name, f"{name}.{method}")

    def _watch(self, module_name: str, dotted: str) -> None:
        module = sys.modules.get(module_name)
        if module is None:
            return
        self._modules[module_name] = module
        *path, attr = dotted.split(".")
        owner = module
        for part in path:
            owner = inspect.getattr_static(owner, part, _MISSING)
            if owner is _MISSING:
                return
        value = inspect.getattr_static(owner, attr, _MISSING)
        if value is not _MISSING:
            self._entries.append((f"{module_name}.{dotted}", owner, attr, value))

    def changed(self) -> list[str]:
        found = [
            name
            for name, owner, attr, value in self._entries
            if inspect.getattr_static(owner, attr, _MISSING) is not value
        ]
        found += [
            f"sys.modules[{name!r}]"
            for name, module in self._modules.items()
            if sys.modules.get(name) is not module
        ]
        return sorted(set(found))


@dataclass(frozen=True)
class Sample:
    """One timed call. `time_ns`: start to end of the call on the timed stream (or the host
    clock on CPU). `gap_ns`: end of the call to a marker recorded after a device-wide
    synchronise; large when work ran on another stream past the end of the call."""

    time_ns: int
    gap_ns: int
    outputs: Any


class HostClock:
    """CPU backend: the host clock, captured at import; nothing to synchronise."""

    kind = "cpu"
    method = "time.perf_counter_ns around each call, in the process that runs it"

    def __init__(self) -> None:
        self.device_name = "cpu"

    def prepare(self, arrays: Sequence[Any]) -> list[Any]:
        import torch

        return [torch.from_numpy(a.copy()) for a in arrays]

    def default_flush_bytes(self) -> int:
        return 0  # last-level cache sizes vary; CPU labs time warm caches on purpose

    def synchronize(self) -> None:
        return None

    def time_call(self, call: Callable[[], Any]) -> Sample:
        start = _perf_counter_ns()
        outputs = call()
        return Sample(time_ns=_perf_counter_ns() - start, gap_ns=0, outputs=outputs)

    def empty_cache(self) -> None:
        return None


class CudaEvents:
    """GPU backend: CUDA events of the C base class, on the stream current at creation."""

    kind = "cuda"
    method = (
        "CUDA events (torch._C._CudaEventBase, captured before your code loaded) around each "
        "call on the default stream, after an L2 flush; a second event after a device-wide "
        "synchronise catches work left running on other streams"
    )

    def __init__(self, device_index: int = 0) -> None:
        import torch

        self._torch = torch
        torch.cuda.set_device(device_index)
        torch.cuda.init()
        base = torch._C._CudaEventBase
        self._event = base
        self._record = base.record
        self._elapsed = base.elapsed_time
        self._event_sync = base.synchronize
        self._device_sync = torch._C._cuda_synchronize
        self._stream = torch.cuda.current_stream()
        self.device_index = device_index
        self.device_name = torch.cuda.get_device_name(device_index)
        self._l2_bytes = int(
            getattr(torch.cuda.get_device_properties(device_index), "L2_cache_size", 0)
        )
        # Three events reused for every sample: creating events inside the loop costs time
        # that would land between samples, not in them, but needlessly.
        self._start = base(enable_timing=True)
        self._end = base(enable_timing=True)
        self._after = base(enable_timing=True)

    def prepare(self, arrays: Sequence[Any]) -> list[Any]:
        torch = self._torch
        tensors = [torch.from_numpy(a.copy()).to(f"cuda:{self.device_index}") for a in arrays]
        self._device_sync()
        return tensors

    def default_flush_bytes(self) -> int:
        # Twice the L2, and at least 256 MiB as triton.testing.do_bench clears: zeroing that
        # takes ~90 us on an H100, long enough for the CPU to launch the timed call (Python,
        # argument binding, a Triton launcher: 20-40 us) before the GPU reaches the start
        # event. With only 2x L2 (100 MB, ~35 us) part of the launch showed in the time: the
        # kernels lab's reference measured 79% of the copy bandwidth here, 92% with do_bench.
        return max(2 * self._l2_bytes, 256 << 20)

    def synchronize(self) -> None:
        self._device_sync()

    def time_call(self, call: Callable[[], Any]) -> Sample:
        self._record(self._start, self._stream)
        outputs = call()
        self._record(self._end, self._stream)
        self._device_sync()
        self._record(self._after, self._stream)
        self._event_sync(self._after)
        time_ms = self._elapsed(self._start, self._end)
        gap_ms = self._elapsed(self._end, self._after)
        return Sample(time_ns=round(time_ms * 1e6), gap_ns=round(gap_ms * 1e6), outputs=outputs)

    def empty_cache(self) -> None:
        self._torch.cuda.empty_cache()


def backend_for(device: str) -> HostClock | CudaEvents:
    return CudaEvents() if device == "cuda" else HostClock()


class DeviceBench:
    """The measuring state of one process: input sets on the device, a flush buffer, outputs
    kept until the trusted side has probed them.

    The trusted side drives it (runner.harness.serve maps protocol messages onto these
    methods); a benchmark script can drive it in-process the same way.
    """

    def __init__(self, backend: HostClock | CudaEvents, function: Callable[..., Any]) -> None:
        self.backend = backend
        self.function = function
        self.sets: list[list[Any]] = []
        self.scalars: tuple[float | int, ...] = ()
        self.kept: list[list[Any]] = []
        self._flush: Any = None
        self._poison_like: tuple[tuple[int, ...], Any] | None = None

    # -- setup ---------------------------------------------------------------------------
    def setup(
        self,
        sets: Sequence[Sequence[Any]],
        *,
        flush_bytes: int | None = None,
        scalars: Sequence[float | int] = (),
    ) -> dict:
        import torch

        self.sets = [self.backend.prepare(arrays) for arrays in sets]
        # Plain numbers passed after the tensors on every call (e.g. an epsilon).
        self.scalars = tuple(scalars)
        flush = self.backend.default_flush_bytes() if flush_bytes is None else int(flush_bytes)
        device = self.sets[0][0].device if self.sets and self.sets[0] else "cpu"
        self._flush = torch.empty(flush // 4, dtype=torch.float32, device=device) if flush else None
        self.backend.synchronize()
        return {
            "flush_bytes": flush,
            "device_name": self.backend.device_name,
            "method": self.backend.method,
        }

    # -- one timed call ------------------------------------------------------------------
    def _prepare_sample(self) -> None:
        """Outside the timed region: NaN into the block the output will probably reuse (the
        caching allocator hands back the most recently freed block of a size), then the
        cache flush."""
        if self._poison_like is not None:
            import torch

            shape, dtype = self._poison_like
            poison = torch.full(shape, float("nan"), dtype=dtype, device=self.sets[0][0].device)
            del poison
        if self._flush is not None:
            self._flush.zero_()

    def time_sample(self, set_index: int) -> Sample:
        arguments = self.sets[set_index]
        self._prepare_sample()
        scalars = self.scalars
        sample = self.backend.time_call(lambda: self.function(*arguments, *scalars))
        outputs = sample.outputs if isinstance(sample.outputs, tuple | list) else [sample.outputs]
        first = outputs[0] if outputs else None
        floating = getattr(getattr(first, "dtype", None), "is_floating_point", False)
        if self._poison_like is None and floating:
            self._poison_like = (tuple(first.shape), first.dtype)
        return Sample(sample.time_ns, sample.gap_ns, list(outputs))

    # -- what the trusted side asks for --------------------------------------------------
    def mutate(self, set_index: int, rows: Sequence[int], values: Any) -> None:
        """Overwrite some rows of a set's first input with fresh values from the trusted side,
        so that no two timed calls see the same input and a cache keyed on pointer, shape or
        content returns stale rows that the probes catch."""
        import torch

        target = self.sets[set_index][0]
        index = torch.as_tensor(list(rows), dtype=torch.long, device=target.device)
        target.index_copy_(0, index, torch.tensor(values).to(target.device))

    def block(self, plan: Sequence[dict], mutations: Sequence[Any]) -> dict:
        """Time one block of samples; keep their outputs for `probe`."""
        self.kept = []
        times, gaps, aliases, problems = [], [], [], []
        for step, values in zip(plan, mutations, strict=True):
            set_index = int(step["set"])
            if step.get("rows"):
                self.mutate(set_index, step["rows"], values)
            sample = self.time_sample(set_index)
            times.append(sample.time_ns)
            gaps.append(sample.gap_ns)
            problem = describe_outputs(sample.outputs)
            problems.append(problem)
            aliases.append(problem is None and aliases_inputs(sample.outputs, self.sets[set_index]))
            self.kept.append(sample.outputs)
        self.backend.synchronize()
        return {"times_ns": times, "gaps_ns": gaps, "aliases": aliases, "problems": problems}

    def probe(self, outputs: Sequence[dict], inputs: Sequence[dict]) -> list[Any]:
        """Rows of kept outputs and of the current input sets, as host arrays, for the trusted
        side to compare. Drops the kept outputs afterwards."""
        import torch

        arrays = []
        for request in outputs:
            tensor = self.kept[int(request["sample"])][0]
            index = torch.as_tensor(request["rows"], dtype=torch.long, device=tensor.device)
            arrays.append(tensor.index_select(0, index).cpu().numpy())
        for request in inputs:
            tensor = self.sets[int(request["set"])][0]
            index = torch.as_tensor(request["rows"], dtype=torch.long, device=tensor.device)
            arrays.append(tensor.index_select(0, index).cpu().numpy())
        self.kept = []
        return arrays

    def wall(self, set_index: int, count: int) -> None:
        """`count` calls back to back, then a device-wide synchronise, with no clock read here:
        the trusted side times the whole request from outside this process."""
        arguments, scalars = self.sets[set_index], self.scalars
        for _ in range(count):
            self.function(*arguments, *scalars)
        self.backend.synchronize()

    def calibrate(self, count: int) -> dict:
        """The same timed sequence around a call that does nothing: what the method itself
        costs, and the gap an honest call leaves."""
        times, gaps = [], []
        for _ in range(count):
            sample = self.backend.time_call(lambda: None)
            times.append(sample.time_ns)
            gaps.append(sample.gap_ns)
        return {"times_ns": times, "gaps_ns": gaps}


def describe_outputs(outputs: Sequence[Any]) -> str | None:
    """None when the call returned one or more tensors, else what it returned instead."""
    import torch

    if not outputs:
        return "nothing"
    bad = [type(o).__name__ for o in outputs if not isinstance(o, torch.Tensor)]
    return ", ".join(bad) if bad else None


def aliases_inputs(outputs: Sequence[Any], inputs: Sequence[Any]) -> bool:
    """True when an output shares memory with an input: the call wrote its answer over its
    input (or returned a view of it), which the trusted side must not accept as work done."""
    spans = []
    for tensor in inputs:
        storage = tensor.untyped_storage()
        spans.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
    for tensor in outputs:
        storage = tensor.untyped_storage()
        low, high = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        if any(low < end and start < high for start, end in spans):
            return True
    return False
