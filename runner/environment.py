"""Describe the machine a report was measured on. Never raises: a CPU node has no GPU, and a
GPU node without a working driver still deserves a report that says so."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import platform
from typing import Any


def describe_environment(
    *, sandbox_mode: str | None = None, sandbox_limits: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "node": platform.node(),
        "cpu": describe_cpu(),
        "torch": _torch(),
        # The CUDA runtime torch was built with (torch.version.cuda); null on a CPU build.
        # The driver's own CUDA version is gpu.cuda_driver.
        "cuda_runtime": _cuda_runtime(),
        "triton": _triton(),
        "numpy": _numpy(),
        "gpu": _gpu(),
        "sandbox": sandbox_mode,
        # uid, unprivileged, cgroup (bool), enforcement (a sentence: how memory and process
        # limits were held, or why only per process), memory_bytes, max_processes, disk_bytes
        "sandbox_limits": sandbox_limits,
    }


@functools.cache
def describe_cpu() -> dict[str, Any]:
    """CPU model, logical CPUs and the CPUs this process may run on."""
    model = platform.processor() or platform.machine()
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo,
    ):
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"model": model, "count": os.cpu_count(), "usable": usable}


@functools.cache
def _torch() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    cuda = getattr(torch.version, "cuda", None)
    return f"{torch.__version__} (CUDA {cuda})" if cuda else torch.__version__


@functools.cache
def _cuda_runtime() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return getattr(torch.version, "cuda", None)


@functools.cache
def _triton() -> str | None:
    """Triton's version when it is importable; null otherwise. Read from the package metadata
    first, so describing a machine does not import Triton."""
    try:
        if importlib.util.find_spec("triton") is None:
            return None
    except (ImportError, ValueError):
        return None
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version("triton")
    # Installed under another distribution name (pytorch-triton on nightlies) or unpacked.
    try:
        import triton
    except Exception:  # noqa: BLE001 - a broken install is "not importable"
        return None
    return getattr(triton, "__version__", None)


def _numpy() -> str | None:
    try:
        import numpy
    except ImportError:
        return None
    return numpy.__version__


@functools.cache
def _gpu() -> dict[str, Any] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError subclasses vary by driver; no GPU is no GPU
        return None
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        # GPU workers pin their GPU by UUID (runner.gpu_workers): the one the job ran on.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
        if visible.startswith("GPU-"):
            handle = pynvml.nvmlDeviceGetHandleByUUID(visible)
            index = int(pynvml.nvmlDeviceGetIndex(handle))
        else:
            index = int(visible) if visible.isdigit() else 0
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return {
            "name": _text(pynvml.nvmlDeviceGetName(handle)),
            "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
            "memory_total_bytes": int(memory.total),
            "index": index,
            "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
        }
    except Exception:  # noqa: BLE001
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
