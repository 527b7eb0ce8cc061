"""Queues from lab requirements, and which queues a GPU's worker consumes."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from runner.gpu_workers import worker_commands
from runner.labspec import LabSpecError, load_lab_spec
from runner.routing import (
    GpuInfo,
    GpuRequirements,
    discover_gpus,
    model_slug,
    parse_requirements,
    qualifies,
    queue_for,
    queues_for_gpu,
)
from tests.runner.support import LAB

H100 = GpuInfo(0, 0, "GPU-aaaa", "NVIDIA H100 80GB HBM3", 85_520_809_984, (9, 0))
T4 = GpuInfo(1, 1, "GPU-bbbb", "Tesla T4", 15_843_721_216, (7, 5))


def parse(raw):
    return parse_requirements(raw, ValueError)


def test_a_lab_without_requirements_goes_to_the_plain_gpu_queue():
    assert queue_for("gpu", parse(None)) == "gpu"
    assert queue_for("cpu", parse({"gpu_memory_gb": 40})) == "cpu"


@pytest.mark.parametrize(
    "raw, queue",
    [
        ({"gpu_memory_gb": 40}, "gpu.mem40g"),
        ({"compute_capability": "9.0"}, "gpu.sm90"),
        ({"compute_capability": "8.6", "gpu_memory_gb": 24}, "gpu.sm86.mem24g"),
        ({"gpu_model": "h100"}, "gpu.h100"),
    ],
)
def test_requirements_name_the_queue(raw, queue):
    assert queue_for("gpu", parse(raw)) == queue


@pytest.mark.parametrize(
    "raw, message",
    [
        ([], "must be a table"),
        ({"vram": 3}, "unknown key(s) in [requirements]: ['vram']"),
        ({"gpu_memory_gb": 0}, "whole number of GB"),
        ({"gpu_memory_gb": 7.5}, "whole number of GB"),
        ({"compute_capability": 9.0}, 'must look like "9.0"'),
        ({"gpu_model": "H100"}, "lowercase model name"),
        ({"gpu_model": "sm90"}, "lowercase model name"),
        ({"gpu_model": "h100", "gpu_memory_gb": 80}, "leave out memory and capability"),
        ({"exclusive": "no"}, "requirements.exclusive must be true or false"),
        ({"exclusive": False}, "exclusive = false needs job_gpu_memory_mib"),
        ({"exclusive": False, "job_gpu_memory_mib": 0}, "needs job_gpu_memory_mib"),
        ({"exclusive": False, "job_gpu_memory_mib": 1.5}, "needs job_gpu_memory_mib"),
        ({"job_gpu_memory_mib": 2000}, "only for labs whose jobs share a GPU"),
    ],
)
def test_bad_requirements_are_refused_with_the_reason(raw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(raw)


def test_jobs_are_exclusive_unless_the_lab_declares_them_correctness_only():
    assert parse(None).exclusive is True
    shared = parse({"exclusive": False, "job_gpu_memory_mib": 2000, "gpu_memory_gb": 16})
    assert (shared.exclusive, shared.job_gpu_memory_mib) == (False, 2000)
    assert queue_for("gpu", shared) == "gpu.mem16g"  # sharing does not change the queue
    assert shared.to_dict()["exclusive"] is False
    assert shared.to_dict()["job_gpu_memory_mib"] == 2000


def test_a_correctness_only_lab_asks_its_gpu_for_a_shared_slot(tmp_path):
    import shutil

    from runner.gpu_share import Request
    from runner.pipeline import gpu_request

    assert gpu_request(load_lab_spec(LAB)) == Request(exclusive=True)
    folder = tmp_path / "softmax"
    shutil.copytree(LAB, folder)
    toml = folder / "lab.toml"
    toml.write_text(
        toml.read_text() + "\n[requirements]\nexclusive = false\njob_gpu_memory_mib = 2000\n"
    )
    assert gpu_request(load_lab_spec(folder)) == Request(exclusive=False, memory_bytes=2000 << 20)


@pytest.mark.parametrize(
    "name, slug",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("Tesla T4", "t4"),
        ("NVIDIA L4", "l4"),
    ],
)
def test_model_slugs_are_short_and_stable(name, slug):
    assert model_slug(name) == slug


@pytest.mark.parametrize(
    "queue, h100, t4",
    [
        ("gpu", True, True),
        ("gpu.h100", True, False),
        ("gpu.t4", False, True),
        ("gpu.mem16g", True, False),  # a T4 has 15.8 GB
        ("gpu.mem80g", True, False),
        ("gpu.mem141g", False, False),
        ("gpu.sm75", True, True),
        ("gpu.sm90", True, False),
        ("gpu.sm90.mem80g", True, False),
        ("gpu.sm100", False, False),
        ("cpu", False, False),
        ("gpu.nonsense.queue", False, False),
    ],
)
def test_a_gpu_qualifies_for_what_it_can_run(queue, h100, t4):
    assert qualifies(H100, queue) is h100
    assert qualifies(T4, queue) is t4


def test_a_worker_consumes_gpu_and_the_lab_queues_its_gpu_satisfies():
    in_use = {"gpu", "gpu.sm90", "gpu.mem40g", "gpu.t4", "gpu.sm75.mem8g"}
    assert queues_for_gpu(H100, in_use) == ["gpu", "gpu.mem40g", "gpu.sm75.mem8g", "gpu.sm90"]
    assert queues_for_gpu(T4, in_use) == ["gpu", "gpu.sm75.mem8g", "gpu.t4"]


class FakeNvml:
    def __init__(self, gpus):
        self.gpus = gpus
        self.open = 0

    def nvmlInit(self):
        self.open += 1

    def nvmlShutdown(self):
        self.open -= 1

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.gpus[index]

    def nvmlDeviceGetName(self, gpu):
        return gpu.name.encode()  # older pynvml returns bytes

    def nvmlDeviceGetUUID(self, gpu):
        return gpu.uuid

    def nvmlDeviceGetMinorNumber(self, gpu):
        return gpu.minor

    def nvmlDeviceGetMemoryInfo(self, gpu):
        return SimpleNamespace(total=gpu.memory_bytes, used=0, free=gpu.memory_bytes)

    def nvmlDeviceGetCudaComputeCapability(self, gpu):
        return gpu.compute_capability


def test_gpus_are_discovered_through_nvml():
    nvml = FakeNvml([H100, T4])
    assert discover_gpus(nvml) == [H100, T4]
    assert nvml.open == 0


def test_each_worker_is_pinned_to_its_own_gpu():
    second = GpuInfo(1, 3, "GPU-cccc", "NVIDIA H100 80GB HBM3", 85_520_809_984, (9, 0))
    commands = worker_commands([H100, second], {"gpu.sm90"}, python="/venv/bin/python")
    assert [c.env for c in commands] == [
        {
            "RUNNER_GPU_DEVICES": "/dev/nvidia0,/dev/nvidiactl,/dev/nvidia-uvm",
            "CUDA_VISIBLE_DEVICES": "GPU-aaaa",
        },
        {
            # the device node follows NVML's minor number, not its index
            "RUNNER_GPU_DEVICES": "/dev/nvidia3,/dev/nvidiactl,/dev/nvidia-uvm",
            "CUDA_VISIBLE_DEVICES": "GPU-cccc",
        },
    ]
    argv = commands[1].argv
    assert argv[:6] == ("/venv/bin/python", "-m", "celery", "-A", "runner.worker", "worker")
    assert argv[argv.index("-Q") + 1] == "gpu,gpu.sm90"
    assert argv[argv.index("-n") + 1] == "gpu1@%h"
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert "CUDA_VISIBLE_DEVICES=GPU-cccc" in commands[1].describe()


def test_gpu_workers_share_prints_each_workers_concurrency(monkeypatch, capsys):
    from runner import gpu_workers

    monkeypatch.setattr(gpu_workers, "discover_gpus", lambda: [H100])
    monkeypatch.setattr("runner.labspec.load_lab_specs", lambda: {})
    assert gpu_workers.main(["--dry-run", "--share", "2"]) == 0
    out = capsys.readouterr().out
    assert "# GPU 0: NVIDIA H100 80GB HBM3, up to 2 jobs at once" in out
    assert " --concurrency 2 " in out
    assert gpu_workers.main(["--dry-run"]) == 0
    assert " --concurrency 1 " in capsys.readouterr().out  # today's default: one at a time


def test_gpu_workers_refuses_a_share_below_one(capsys):
    from runner import gpu_workers

    with pytest.raises(SystemExit):
        gpu_workers.main(["--dry-run", "--share", "0"])
    assert "must be a whole number of jobs, at least 1" in capsys.readouterr().err


def test_the_softmax_lab_needs_any_gpu():
    assert load_lab_spec(LAB).requirements == GpuRequirements()


def test_a_lab_spec_with_bad_requirements_names_the_file(tmp_path):
    import shutil

    folder = tmp_path / "softmax"
    shutil.copytree(LAB, folder)
    toml = folder / "lab.toml"
    toml.write_text(toml.read_text() + '\n[requirements]\ncompute_capability = "nine"\n')
    with pytest.raises(LabSpecError, match=r"lab\.toml: requirements\.compute_capability"):
        load_lab_spec(folder)


def test_when_one_worker_exits_the_launcher_stops_the_others_and_passes_on_its_status():
    import sys
    import time

    from runner.gpu_workers import WorkerCommand, run

    def command(gpu: GpuInfo, code: str) -> WorkerCommand:
        return WorkerCommand(gpu=gpu, queues=("gpu",), argv=(sys.executable, "-c", code), env={})

    started = time.monotonic()
    status = run(
        [command(H100, "import time; time.sleep(60)"), command(T4, "raise SystemExit(3)")],
        poll_s=0.05,
    )
    assert status == 3
    assert time.monotonic() - started < 30  # the sleeper was stopped, not waited for


# -- each GPU's worker on its own share of the CPUs ------------------------------------------


def test_the_cpus_are_split_into_one_contiguous_block_per_gpu():
    from runner.gpu_workers import cpu_list, split_cpus

    assert split_cpus(range(32), 2) == [frozenset(range(16)), frozenset(range(16, 32))]
    # Uneven: the first blocks take one more; every CPU is used once.
    blocks = split_cpus([0, 1, 2, 3, 4, 5, 6], 3)
    assert blocks == [frozenset({0, 1, 2}), frozenset({3, 4}), frozenset({5, 6})]
    # Fewer CPUs than GPUs: no split, they all share.
    assert split_cpus([0], 2) == [None, None]
    assert cpu_list(frozenset({0, 1, 2, 3, 8, 10, 11})) == "0-3,8,10-11"


def test_each_worker_gets_its_share_of_the_cpus_and_the_dry_run_says_which(monkeypatch, capsys):
    from runner import gpu_workers

    second = GpuInfo(1, 1, "GPU-cccc", "NVIDIA H100 80GB HBM3", 85_520_809_984, (9, 0))
    commands = worker_commands([H100, second], {"gpu"}, cpus=list(range(32)))
    assert [c.cpus for c in commands] == [frozenset(range(16)), frozenset(range(16, 32))]
    assert "CPUs 16-31" in commands[1].describe()
    assert all(c.cpus is None for c in worker_commands([H100, second], {"gpu"}))

    monkeypatch.setattr(gpu_workers, "discover_gpus", lambda: [H100, second])
    monkeypatch.setattr("runner.labspec.load_lab_specs", lambda: {})
    monkeypatch.setattr(gpu_workers.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert gpu_workers.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "one job at a time, CPUs 0-3\n" in out and "one job at a time, CPUs 4-7\n" in out
    assert gpu_workers.main(["--dry-run", "--no-cpu-split"]) == 0
    assert "CPUs" not in capsys.readouterr().out


def test_the_launcher_starts_each_worker_on_its_cpus(tmp_path):
    import os
    import sys

    from runner.gpu_workers import WorkerCommand, run

    mine = sorted(os.sched_getaffinity(0))
    report = tmp_path / "affinity.txt"
    code = f"import os; open({str(report)!r}, 'w').write(repr(sorted(os.sched_getaffinity(0))))"
    command = WorkerCommand(
        gpu=H100,
        queues=("gpu",),
        argv=(sys.executable, "-c", code),
        env={},
        cpus=frozenset(mine[-1:]),
    )
    assert run([command], poll_s=0.05) == 0
    assert report.read_text() == repr(mine[-1:])


def dgx_like(count: int = 8) -> list[GpuInfo]:
    """Eight GPUs over two sockets of 56 cores with hyperthreads, as NVML reports their CPU
    affinity on a DGX H100: GPUs 0-3 on CPUs 0-55 and 112-167, GPUs 4-7 on the rest."""
    first = frozenset(range(56)) | frozenset(range(112, 168))
    second = frozenset(range(56, 112)) | frozenset(range(168, 224))
    name, memory = "NVIDIA H100 80GB HBM3", 85_520_809_984
    return [
        GpuInfo(i, i, f"GPU-{i}", name, memory, (9, 0), first if i < count // 2 else second)
        for i in range(count)
    ]


def test_each_gpu_gets_cpus_of_its_own_numa_node_when_nvml_names_them():
    from runner.gpu_workers import assign_cpus

    gpus = dgx_like()
    shares, how = assign_cpus(gpus, range(224))
    assert how.startswith("NUMA-local")
    assert all(len(share) == 28 for share in shares)
    assert all(share <= gpu.cpu_affinity for share, gpu in zip(shares, gpus, strict=True))
    assert frozenset().union(*shares) == frozenset(range(224))  # every CPU, once
    assert sum(len(share) for share in shares) == 224
    # Started under taskset with socket 0 only: the second socket's GPUs get no local CPU,
    # so the CPUs given are split in contiguous blocks instead.
    shares, how = assign_cpus(gpus, range(56))
    assert how.startswith("contiguous") and all(len(share) == 7 for share in shares)


def test_without_a_usable_affinity_the_cpus_are_split_in_contiguous_blocks():
    from runner.gpu_workers import assign_cpus

    gpus = dgx_like(2)
    unknown = [gpus[0], GpuInfo(1, 1, "GPU-1", "NVIDIA H100 80GB HBM3", 1, (9, 0))]
    assert assign_cpus(unknown, range(8))[0] == [frozenset(range(4)), frozenset(range(4, 8))]
    overlapping = [
        GpuInfo(0, 0, "GPU-0", "NVIDIA H100 80GB HBM3", 1, (9, 0), frozenset(range(6))),
        GpuInfo(1, 1, "GPU-1", "NVIDIA H100 80GB HBM3", 1, (9, 0), frozenset(range(2, 8))),
    ]
    shares, how = assign_cpus(overlapping, range(8))
    assert how.startswith("contiguous") and shares[0] == frozenset(range(4))


def test_discovery_reads_each_gpus_cpu_affinity_mask_from_nvml():
    class AffinityNvml(FakeNvml):
        def nvmlDeviceGetCpuAffinity(self, gpu, words):  # noqa: N802 - pynvml's name
            assert words >= 1
            # CPUs 0-3 for the first GPU; CPU 64 (bit 0 of the second word) for the second
            return [0b1111, 0] if gpu is H100 else [0, 1]

    found = discover_gpus(AffinityNvml([H100, T4]))
    assert found[0].cpu_affinity == frozenset(range(4))
    assert found[1].cpu_affinity == frozenset({64})
    assert discover_gpus(FakeNvml([H100]))[0].cpu_affinity is None  # NVML cannot say
