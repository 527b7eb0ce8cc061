"""Which queue a job goes to, and which queues a GPU worker consumes.

A lab states what its GPU jobs need in lab.toml:

    [requirements]
    gpu_memory_gb = 40          # at least this much GPU memory (decimal GB, as NVML reports)
    compute_capability = "9.0"  # at least this compute capability (e.g. for wgmma, FP8)
    # or, instead of both:
    gpu_model = "h100"          # exactly this model (names as model_slug() makes them)

    # A lab whose GPU jobs time nothing (correctness only) may let them share a GPU:
    exclusive = false           # default true: every job has the GPU to itself
    job_gpu_memory_mib = 2000   # the most GPU memory one job uses (MiB), required then

Sharing does not change the queue; it decides how a worker admits the job to its GPU
(runner/gpu_share.py). `gpu_memory_gb` is the size of the card, `job_gpu_memory_mib` what
one job takes of it, every process and CUDA context of the job included.

and every GPU job of the lab goes to one queue that encodes that need:

    cpu                          device_class "cpu"
    gpu                          no requirement
    gpu.h100                     gpu_model
    gpu.sm90 / gpu.mem40g        one of the two
    gpu.sm90.mem40g              both

A GPU worker consumes `gpu` and every queue that the labs route to and its own GPU satisfies
(`queues_for_gpu`), so a job never lands on a GPU that cannot run it, and a big GPU still
takes the small jobs. Queue names come from the labs present when the worker starts: restart
GPU workers after adding a lab with new requirements.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_QUEUE = re.compile(r"^gpu(?:\.sm(?P<sm>\d{2,3}))?(?:\.mem(?P<mem>\d+)g)?$")
_MODEL_QUEUE = re.compile(r"^gpu\.(?P<model>[a-z][a-z0-9]*)$")
_CAPABILITY = re.compile(r"^(\d{1,2})\.(\d)$")
_MODEL_SLUG = re.compile(r"^[a-z][a-z0-9]*$")
REQUIREMENT_KEYS = frozenset(
    {"gpu_memory_gb", "compute_capability", "gpu_model", "exclusive", "job_gpu_memory_mib"}
)


@dataclass(frozen=True)
class GpuRequirements:
    """What a lab's GPU jobs need; all None: any GPU. `exclusive` false with
    `job_gpu_memory_mib`: its jobs time nothing and may share a GPU, using at most that much
    of its memory."""

    gpu_memory_gb: int | None = None
    compute_capability: tuple[int, int] | None = None
    gpu_model: str | None = None
    exclusive: bool = True
    job_gpu_memory_mib: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_memory_gb": self.gpu_memory_gb,
            "compute_capability": (
                "{}.{}".format(*self.compute_capability) if self.compute_capability else None
            ),
            "gpu_model": self.gpu_model,
            "exclusive": self.exclusive,
            "job_gpu_memory_mib": self.job_gpu_memory_mib,
        }


def parse_requirements(raw: Any, fail: Callable[[str], Exception]) -> GpuRequirements:
    """The [requirements] table of a lab.toml; `fail(message)` makes the error to raise."""
    if raw is None:
        return GpuRequirements()
    if not isinstance(raw, dict):
        raise fail("requirements must be a table")
    unknown = set(raw) - REQUIREMENT_KEYS
    if unknown:
        raise fail(f"unknown key(s) in [requirements]: {sorted(unknown)}")
    memory = raw.get("gpu_memory_gb")
    if memory is not None and (
        isinstance(memory, bool) or not isinstance(memory, int) or memory < 1
    ):
        raise fail("requirements.gpu_memory_gb must be a whole number of GB, at least 1")
    capability = raw.get("compute_capability")
    parsed_capability = None
    if capability is not None:
        match = _CAPABILITY.match(capability) if isinstance(capability, str) else None
        if not match:
            raise fail('requirements.compute_capability must look like "9.0"')
        parsed_capability = (int(match.group(1)), int(match.group(2)))
    model = raw.get("gpu_model")
    if model is not None:
        if (
            not isinstance(model, str)
            or not _MODEL_SLUG.match(model)
            or _QUEUE.match(f"gpu.{model}")
        ):
            raise fail('requirements.gpu_model must be a lowercase model name such as "h100"')
        if memory is not None or capability is not None:
            raise fail("requirements.gpu_model names one model: leave out memory and capability")
    exclusive = raw.get("exclusive", True)
    if not isinstance(exclusive, bool):
        raise fail("requirements.exclusive must be true or false")
    job_memory = raw.get("job_gpu_memory_mib")
    if exclusive and job_memory is not None:
        raise fail(
            "requirements.job_gpu_memory_mib is only for labs whose jobs share a GPU: "
            "set exclusive = false, or leave it out"
        )
    if not exclusive and (
        isinstance(job_memory, bool) or not isinstance(job_memory, int) or job_memory < 1
    ):
        raise fail(
            "requirements.exclusive = false needs job_gpu_memory_mib: the most GPU memory one "
            "job uses, in MiB (a whole number, every process and CUDA context included)"
        )
    return GpuRequirements(
        gpu_memory_gb=memory,
        compute_capability=parsed_capability,
        gpu_model=model,
        exclusive=exclusive,
        job_gpu_memory_mib=job_memory,
    )


def queue_for(device_class: str, requirements: GpuRequirements | None = None) -> str:
    """The queue one job goes to."""
    if device_class != "gpu":
        return device_class
    requirements = requirements or GpuRequirements()
    # Sharing (exclusive, job_gpu_memory_mib) is decided on the GPU, not by the queue.
    if requirements.gpu_model:
        return f"gpu.{requirements.gpu_model}"
    queue = "gpu"
    if requirements.compute_capability:
        major, minor = requirements.compute_capability
        queue += f".sm{major}{minor}"
    if requirements.gpu_memory_gb:
        queue += f".mem{requirements.gpu_memory_gb}g"
    return queue


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML describes it."""

    index: int  # NVML's
    minor: int  # of its device node, /dev/nvidia<minor>
    uuid: str
    name: str
    memory_bytes: int
    compute_capability: tuple[int, int]
    # The CPUs NVML names as this GPU's ideal affinity (its NUMA node's); None if unknown.
    cpu_affinity: frozenset[int] | None = None

    @property
    def model(self) -> str:
        return model_slug(self.name)


def model_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA A100-SXM4-80GB' -> 'a100',
    'NVIDIA GeForce RTX 4090' -> 'rtx4090', 'Tesla T4' -> 't4', 'NVIDIA H200' -> 'h200'."""
    words = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    words = [w for w in words if w not in {"nvidia", "tesla", "geforce", "quadro"}]
    if len(words) >= 2 and words[0] == "rtx" and words[1][:1].isdigit():
        return "rtx" + words[1]
    for word in words:
        if re.match(r"^[a-z]+\d+[a-z]*$", word):
            return word
    return words[0] if words else "unknown"


def qualifies(gpu: GpuInfo, queue: str) -> bool:
    """Whether this GPU can run the jobs of `queue` (one of queue_for's names)."""
    model = _MODEL_QUEUE.match(queue)
    if model and not _QUEUE.match(queue):
        return model.group("model") == gpu.model
    match = _QUEUE.match(queue)
    if not match:
        return False
    if match.group("sm"):
        digits = match.group("sm")
        needed = (int(digits[:-1]), int(digits[-1]))
        if gpu.compute_capability < needed:
            return False
    return not (match.group("mem") and gpu.memory_bytes < int(match.group("mem")) * 10**9)


def queues_for_gpu(gpu: GpuInfo, lab_queues: Iterable[str]) -> list[str]:
    """`gpu`, then every GPU queue the labs use that this GPU satisfies, sorted."""
    wanted = {q for q in lab_queues if q.startswith("gpu.") and qualifies(gpu, q)}
    return ["gpu", *sorted(wanted)]


def lab_queues(specs: Mapping[str, Any]) -> set[str]:
    """The queues the labs' GPU jobs go to (specs: slug -> LabSpec)."""
    return {
        queue_for("gpu", spec.requirements)
        for spec in specs.values()
        if "gpu" in spec.device_classes
    }


def cpu_affinity(nvml: Any, handle: Any) -> frozenset[int] | None:
    """The CPUs of the GPU's ideal affinity (nvmlDeviceGetCpuAffinity: a bit mask in 64-bit
    words, bit j of word i is CPU 64 i + j); None when NVML cannot say (a driver or GPU
    without it, a fake)."""
    words = -(-(os.cpu_count() or 1) // 64)
    try:
        mask = nvml.nvmlDeviceGetCpuAffinity(handle, words)
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported and friends: then no preference
        return None
    cpus = frozenset(
        64 * word + bit for word, value in enumerate(mask) for bit in range(64) if value >> bit & 1
    )
    return cpus or None


def discover_gpus(nvml: Any = None) -> list[GpuInfo]:
    """Every GPU of this node, from NVML (`pynvml`; tests pass a fake)."""
    if nvml is None:
        import pynvml as nvml  # noqa: PLC0415 - only GPU nodes need it
    nvml.nvmlInit()
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    minor=int(nvml.nvmlDeviceGetMinorNumber(handle)),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                    compute_capability=tuple(
                        int(v) for v in nvml.nvmlDeviceGetCudaComputeCapability(handle)
                    ),
                    cpu_affinity=cpu_affinity(nvml, handle),
                )
            )
        return gpus
    finally:
        nvml.nvmlShutdown()
