"""The ceilings of a roofline, measured on this node: peak memory bandwidth (a large copy) and
peak matmul throughput per dtype. Measured once per node and cached as JSON keyed by what
would change them (the GPU and its driver, or the CPU, and the torch version).

The peaks are *measured*, not the datasheet's: a kernel is judged against what this machine
was seen to do with torch's own copy and matmul, so "85% of the roofline" means 85% of
something a learner could reach. Inputs are random (never zeros: some hardware moves and
multiplies zeros faster and draws less power doing it).

`runner.measure.peaks_cache.load_or_measure_peaks` is the entry point for graders (it measures
once per node); `measure_peaks` does the work.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runner.environment import describe_cpu

PEAKS_SCHEMA = "inference-roadmap/peaks@1"

GPU_COPY_BYTES = 1 << 30  # per buffer; far above any L2 (H100: 50 MB)
CPU_COPY_MIN_BYTES = 256 << 20  # per buffer; 4x the last-level cache when that is more
GPU_MATMUL_N = 8192
CPU_MATMUL_N = 2048

DTYPE_NAMES = ("fp64", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Peaks:
    """What this node was measured to do: bytes per second of a large copy (read + write)
    and FLOPs per second of a large matmul, per dtype name ("bf16", "fp32", ...)."""

    memory_bytes_per_s: float
    flops_per_s: dict[str, float]
    device: dict[str, Any]  # kind, name or model, driver, torch, ... (describe_device)
    measured_at: str  # ISO 8601, UTC
    method: str  # sentences: what was run, how it was timed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Peaks:
        """Rebuild from to_dict(); ValueError naming the field when something is off."""
        if not isinstance(data, Mapping):
            raise ValueError("peaks: not an object")
        bandwidth = _positive(data.get("memory_bytes_per_s"), "memory_bytes_per_s")
        flops = data.get("flops_per_s")
        if not isinstance(flops, Mapping) or not flops:
            raise ValueError("peaks: flops_per_s must be a non-empty object")
        rates = {str(k): _positive(v, f"flops_per_s.{k}") for k, v in flops.items()}
        device = data.get("device")
        if not isinstance(device, Mapping):
            raise ValueError("peaks: device must be an object")
        for name in ("measured_at", "method"):
            if not isinstance(data.get(name), str):
                raise ValueError(f"peaks: {name} must be a string")
        return cls(
            memory_bytes_per_s=bandwidth,
            flops_per_s=rates,
            device=dict(device),
            measured_at=data["measured_at"],
            method=data["method"],
        )


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"peaks: {name} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"peaks: {name} must be positive and finite, not {value!r}")
    return float(value)


# -- which node is this ------------------------------------------------------------------------


def describe_device(device: str = "cuda") -> dict[str, Any]:
    """What a measurement on `device` ("cuda", "cuda:N" or "cpu") ran on. On CUDA this
    creates a CUDA context in the calling process."""
    import torch  # noqa: PLC0415 - the web side imports runner without torch

    kind = torch.device(device).type
    if kind == "cuda":
        index = _cuda_index(torch, device)
        return {
            "kind": "cuda",
            "name": torch.cuda.get_device_name(index),
            "index": index,
            "driver": _nvidia_driver(),
            "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda,
        }
    if kind == "cpu":
        cpu = describe_cpu()
        return {
            "kind": "cpu",
            "model": cpu["model"],
            "count": cpu["count"],
            # CPU peaks scale with threads; a lab that times on one thread needs peaks
            # measured on one thread.
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
    raise ValueError(f"peaks can be measured on cuda or cpu, not {device!r}")


def device_key(device: str = "cuda") -> dict[str, Any]:
    """The fields that identify cached peaks: GPU name, driver and torch version (or CPU model,
    logical CPUs, torch threads and torch version). Any change means measuring again."""
    described = describe_device(device)
    fields = ("kind", "name", "driver", "torch")
    if described["kind"] == "cpu":
        fields = ("kind", "model", "count", "threads", "torch")
    return {name: described[name] for name in fields}


def _cuda_index(torch: Any, device: str) -> int:
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def _nvidia_driver() -> str | None:
    try:
        import pynvml  # noqa: PLC0415 - GPU nodes only
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError subclasses vary by driver
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        return driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:  # noqa: BLE001
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


# -- measuring ---------------------------------------------------------------------------------


def measure_peaks(
    device: str = "cuda",
    *,
    copy_bytes: int | None = None,
    matmul_n: int | None = None,
    dtypes: Sequence[str] | None = None,
    repeats: int = 20,
    warmup: int = 3,
) -> Peaks:
    """Measure this node's copy bandwidth and matmul throughput on `device` ("cuda",
    "cuda:N" or "cpu"). Takes a few seconds; use load_or_measure_peaks to do it once.

    copy_bytes is the size of each of the two buffers (bytes read + bytes written are
    counted); matmul_n the side of the square matrices; dtypes the matmul dtypes (default
    bf16 and fp32 on CUDA, fp32 on CPU). Each figure is the median of `repeats` timings after
    `warmup` untimed runs.
    """
    import torch  # noqa: PLC0415 - the web side imports runner without torch

    if repeats < 1 or warmup < 0:
        raise ValueError("need repeats >= 1 and warmup >= 0")
    kind = torch.device(device).type
    if kind == "cuda":
        return _measure_cuda(torch, device, copy_bytes, matmul_n, dtypes, repeats, warmup)
    if kind == "cpu":
        return _measure_cpu(torch, copy_bytes, matmul_n, dtypes, repeats, warmup)
    raise ValueError(f"peaks can be measured on cuda or cpu, not {device!r}")


def _measure_cuda(torch, device, copy_bytes, matmul_n, dtypes, repeats, warmup) -> Peaks:
    index = _cuda_index(torch, device)
    target = torch.device("cuda", index)
    copy_bytes = copy_bytes or GPU_COPY_BYTES
    matmul_n = matmul_n or GPU_MATMUL_N
    dtypes = tuple(dtypes or ("bf16", "fp32"))
    described = describe_device(f"cuda:{index}")

    def timer(work: Callable[[], Any]) -> float:
        return _cuda_median_s(torch, work, repeats, warmup)

    with torch.cuda.device(index):
        generator = torch.Generator(device=target).manual_seed(0)
        try:
            moved, bandwidth = _copy_rate(torch, target, generator, copy_bytes, timer)
            with _true_fp32(torch):
                rates = {
                    name: _matmul_rate(torch, target, generator, matmul_n, name, timer)
                    for name in dtypes
                }
        finally:
            # The worker's GPU memory check compares with a baseline: give the memory back.
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    method = (
        f"Memory: median of {repeats} device-to-device copies (dst.copy_(src)) of "
        f"{_gib(copy_bytes)} of random float32 after {warmup} warm-up copies, timed with CUDA "
        f"events, counting bytes read plus bytes written ({_gib(moved)} per copy). "
        f"Matmul: median of {repeats} torch.matmul of random {matmul_n}x{matmul_n} matrices "
        f"per dtype ({', '.join(dtypes)}) after {warmup} warm-up calls, timed with CUDA events, "
        f"2n^3 FLOPs each. fp32 is true fp32: torch.backends.cuda.matmul.allow_tf32 = False, "
        "PyTorch's default (turned off for the measurement if the process had turned it on); "
        "TF32 would be several times faster."
    )
    return Peaks(
        memory_bytes_per_s=bandwidth,
        flops_per_s=rates,
        device=described,
        measured_at=_now(),
        method=method,
    )


def _measure_cpu(torch, copy_bytes, matmul_n, dtypes, repeats, warmup) -> Peaks:
    copy_bytes = copy_bytes or _cpu_copy_bytes()
    matmul_n = matmul_n or CPU_MATMUL_N
    dtypes = tuple(dtypes or ("fp32",))
    described = describe_device("cpu")
    target = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)

    def timer(work: Callable[[], Any]) -> float:
        return _cpu_median_s(work, repeats, warmup)

    moved, bandwidth = _copy_rate(torch, target, generator, copy_bytes, timer)
    rates = {name: _matmul_rate(torch, target, generator, matmul_n, name, timer) for name in dtypes}
    method = (
        f"Memory: median of {repeats} copies (dst.copy_(src)) of {_gib(copy_bytes)} of random "
        f"float32 after {warmup} warm-up copies, timed with perf_counter_ns, counting bytes "
        f"read plus bytes written ({_gib(moved)} per copy; write-allocate traffic is not "
        f"counted). Matmul: median of {repeats} torch.matmul of random {matmul_n}x{matmul_n} "
        f"matrices per dtype ({', '.join(dtypes)}) after {warmup} warm-up calls, 2n^3 FLOPs "
        f"each. {described['threads']} torch thread(s)."
    )
    return Peaks(
        memory_bytes_per_s=bandwidth,
        flops_per_s=rates,
        device=described,
        measured_at=_now(),
        method=method,
    )


def _copy_rate(torch, target, generator, copy_bytes, timer) -> tuple[int, float]:
    """Bytes moved per copy (read + written) and bytes per second of dst.copy_(src)."""
    src = torch.rand(max(1, copy_bytes // 4), device=target, generator=generator)
    dst = torch.empty_like(src)
    moved = 2 * src.numel() * src.element_size()
    return moved, moved / timer(lambda: dst.copy_(src))


def _matmul_rate(torch, target, generator, n, dtype_name, timer) -> float:
    """FLOPs per second of torch.matmul on random n x n matrices (2n^3 FLOPs a call)."""
    dtype = _torch_dtype(torch, dtype_name)
    a = torch.randn(n, n, device=target, generator=generator).to(dtype)
    b = torch.randn(n, n, device=target, generator=generator).to(dtype)
    return 2 * n**3 / timer(lambda: torch.matmul(a, b))


def _cuda_median_s(torch: Any, work: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median seconds of `work` on the current stream, by CUDA events around each call. The
    calls are queued back to back and read after one synchronisation, so the host never
    leaves the GPU idle between them."""
    for _ in range(warmup):
        work()
    torch.cuda.synchronize()
    events = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


def _cpu_median_s(work: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        work()
        times.append(time.perf_counter_ns() - started)
    return max(statistics.median(times), 1) / 1e9


@contextlib.contextmanager
def _true_fp32(torch: Any) -> Iterator[None]:
    """fp32 matmuls without TF32 for the duration, restoring whatever the process had.
    PyTorch refuses to read the legacy flag once the newer fp32_precision API was used, so
    each API is put back through itself."""
    matmul = torch.backends.cuda.matmul
    try:
        legacy = bool(matmul.allow_tf32)
    except RuntimeError:  # the process used the fp32_precision API
        legacy = None
    if legacy is False:
        yield
    elif legacy is True:
        matmul.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32 = True
    else:
        previous = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = previous


def _torch_dtype(torch: Any, name: str) -> Any:
    dtypes = {
        "fp64": torch.float64,
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
    }
    if name not in dtypes:
        raise ValueError(f"unknown matmul dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return dtypes[name]


def _cpu_copy_bytes() -> int:
    """A copy buffer well above the last-level cache: 4x all of it (every socket's, every
    CCX's), at least 256 MiB, at most an eighth of the memory (there are two buffers)."""
    wanted = max(CPU_COPY_MIN_BYTES, 4 * _last_level_cache_bytes())
    with contextlib.suppress(ValueError, OSError, AttributeError):
        wanted = min(wanted, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8)
    return wanted


def _last_level_cache_bytes() -> int:
    """The machine's total last-level cache from sysfs: the size of each distinct
    highest-level cache (one per group of CPUs sharing it), summed. 0 when unknown."""
    found: dict[tuple[int, str], int] = {}
    for cache in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cache/index[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            if (cache / "type").read_text().strip() == "Instruction":
                continue
            level = int((cache / "level").read_text())
            shared = (cache / "shared_cpu_list").read_text().strip()
            text = (cache / "size").read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            found[(level, shared)] = int(text.rstrip("KMG")) * scale
    if not found:
        return 0
    top = max(level for level, _ in found)
    return sum(size for (level, _), size in found.items() if level == top)


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.2f} GiB" if value >= 1 << 28 else f"{value / (1 << 20):.1f} MiB"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
