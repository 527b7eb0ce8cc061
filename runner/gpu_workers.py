"""One Celery worker process per GPU of this node, each pinned to its GPU.

    python -m runner gpu-workers [--dry-run] [--share N] [--loglevel INFO]

For each GPU NVML reports, a worker (`celery -A runner.worker worker`) that:

- sees only that GPU: `RUNNER_GPU_DEVICES=/dev/nvidia<minor>,/dev/nvidiactl,/dev/nvidia-uvm`
  (the sandbox binds only those device nodes) and `CUDA_VISIBLE_DEVICES=<its UUID>` (a UUID
  names the same GPU whatever the enumeration order);
- consumes `gpu` and every queue of the labs that its GPU satisfies (runner/routing.py);
- takes one job at a time (`--concurrency 1`, prefetch 1): timing needs the GPU alone. With
  `--share N` it takes up to N (`--concurrency N`): correctness-only jobs then share the GPU
  when their declared memory fits, and a timing job still has it alone (runner/gpu_share.py);
- runs on its own share of the node's CPUs (`sched_setaffinity`, inherited by its jobs'
  sandboxes): the CPUs this launcher may use, split between the GPUs. Where NVML names each
  GPU's NUMA-local CPUs (nvmlDeviceGetCpuAffinity), each GPU's share comes from its own
  node's CPUs, split among the GPUs that share that node; otherwise the CPUs are split into
  one contiguous block per GPU (assign_cpus). A
  grading job is mostly CPU work (notebook cells, float64 reference checks, a load generator)
  and torch sizes its thread pool from the CPUs a process may use: without the split, two
  jobs on two GPUs each ran 32 threads on the same 32 cores, and a notebook cell that takes
  under 40 s alone ran past its 120 s limit (docs/gpu-worker.md). `--no-cpu-split` leaves
  every worker the whole set;
- is named `gpu<index>@<host>`, so the fleet's telemetry and logs say which GPU.

The launcher forwards SIGINT/SIGTERM to every worker and waits for them; when one worker
exits on its own, it stops the others and exits with that worker's status, so a service
manager restarts the set.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from runner.routing import GpuInfo, discover_gpus, lab_queues, queues_for_gpu


@dataclass(frozen=True)
class WorkerCommand:
    gpu: GpuInfo
    queues: tuple[str, ...]
    argv: tuple[str, ...]
    env: dict[str, str]  # added to the launcher's own environment
    cpus: frozenset[int] | None = None  # its share of the node's CPUs; None: the launcher's

    @property
    def concurrency(self) -> int:
        return int(self.argv[self.argv.index("--concurrency") + 1])

    def describe(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        jobs = (
            "one job at a time"
            if self.concurrency == 1
            else f"up to {self.concurrency} jobs at once (correctness-only jobs share the GPU)"
        )
        where = f", CPUs {cpu_list(self.cpus)}" if self.cpus else ""
        return (
            f"# GPU {self.gpu.index}: {self.gpu.name}, {jobs}{where}\n{env} {shlex.join(self.argv)}"
        )


def split_cpus(cpus: Sequence[int], parts: int) -> list[frozenset[int] | None]:
    """`cpus` in `parts` contiguous blocks as even as can be (the first ones one larger);
    None for every part when there are fewer CPUs than parts (then they all share)."""
    ordered = sorted(cpus)
    if parts < 1 or len(ordered) < parts:
        return [None] * max(parts, 0)
    size, extra = divmod(len(ordered), parts)
    blocks, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        blocks.append(frozenset(ordered[start:end]))
        start = end
    return blocks


def assign_cpus(
    gpus: Sequence[GpuInfo], cpus: Sequence[int]
) -> tuple[list[frozenset[int] | None], str]:
    """Each GPU's share of `cpus`, and how it was chosen. NUMA-local where NVML gave every
    GPU an affinity that meets `cpus` and GPUs either share a whole affinity set or none of
    it (then each set is split among its GPUs); else contiguous blocks (split_cpus)."""
    available = frozenset(cpus)
    local = [
        (gpu.cpu_affinity & available) if gpu.cpu_affinity is not None else frozenset()
        for gpu in gpus
    ]
    distinct = set(local)
    disjoint = all(a == b or not a & b for a in distinct for b in distinct)
    if gpus and all(local) and disjoint:
        groups: dict[frozenset[int], list[int]] = {}
        for position, cpu_set in enumerate(local):
            groups.setdefault(cpu_set, []).append(position)
        shares: list[frozenset[int] | None] = [None] * len(gpus)
        for cpu_set, positions in groups.items():
            blocks = split_cpus(cpu_set, len(positions))
            for position, block in zip(positions, blocks, strict=True):
                shares[position] = block if block is not None else cpu_set
        return shares, "NUMA-local, from NVML's CPU affinity of each GPU"
    return split_cpus(cpus, len(gpus)), "contiguous blocks (NVML gave no usable CPU affinity)"


def cpu_list(cpus: frozenset[int]) -> str:
    """0-15,32 style, as taskset and /proc write CPU lists."""
    ordered, ranges = sorted(cpus), []
    for cpu in ordered:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


def worker_commands(
    gpus: Sequence[GpuInfo],
    queues_in_use: set[str],
    *,
    python: str = sys.executable,
    concurrency: int = 1,
    loglevel: str = "INFO",
    cpus: Sequence[int] | None = None,
) -> list[WorkerCommand]:
    """One command per GPU; `cpus`, when given, shared out among them (assign_cpus)."""
    shares = assign_cpus(gpus, cpus)[0] if cpus else [None] * len(gpus)
    commands = []
    for gpu, share in zip(gpus, shares, strict=True):
        queues = tuple(queues_for_gpu(gpu, queues_in_use))
        argv = (
            python,
            "-m",
            "celery",
            "-A",
            "runner.worker",
            "worker",
            "-Q",
            ",".join(queues),
            "-n",
            f"gpu{gpu.index}@%h",
            "--concurrency",
            str(concurrency),
            "--prefetch-multiplier",
            "1",
            "--loglevel",
            loglevel,
        )
        env = {
            "RUNNER_GPU_DEVICES": f"/dev/nvidia{gpu.minor},/dev/nvidiactl,/dev/nvidia-uvm",
            "CUDA_VISIBLE_DEVICES": gpu.uuid,
        }
        commands.append(WorkerCommand(gpu=gpu, queues=queues, argv=argv, env=env, cpus=share))
    return commands


def run(commands: Sequence[WorkerCommand], *, poll_s: float = 0.5) -> int:
    """Start every worker, forward stop signals, return the first worker's exit status."""
    processes = [
        subprocess.Popen(
            command.argv,
            env={**os.environ, **command.env},
            # Before exec, so every thread and child of the worker inherits it.
            preexec_fn=_pin(command.cpus) if command.cpus else None,  # noqa: PLW1509 - no threads here
        )
        for command in commands
    ]

    def stop(signum: int, _frame: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            for process in processes:
                code = process.poll()
                if code is not None:
                    stop(signal.SIGTERM, None)
                    for other in processes:
                        other.wait()
                    return code
            time.sleep(poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _pin(cpus: frozenset[int]):
    return lambda: os.sched_setaffinity(0, cpus)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of jobs, at least 1 (got {text!r})"
        )
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner gpu-workers")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, start none")
    parser.add_argument(
        "--share",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="jobs each GPU's worker runs at once (default 1); above 1, correctness-only jobs "
        "share the GPU when their declared memory fits, timing jobs still have it alone",
    )
    parser.add_argument(
        "--no-cpu-split",
        action="store_true",
        help="let every worker use all of this launcher's CPUs (default: one block per GPU)",
    )
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    from runner.labspec import load_lab_specs

    gpus = discover_gpus()
    if not gpus:
        print("no GPU found by NVML: nothing to start", file=sys.stderr)
        return 1
    cpus = None if args.no_cpu_split else sorted(os.sched_getaffinity(0))
    commands = worker_commands(
        gpus,
        lab_queues(load_lab_specs()),
        concurrency=args.share,
        loglevel=args.loglevel,
        cpus=cpus,
    )
    if cpus:
        print(f"# CPUs {cpu_list(frozenset(cpus))} shared out: {assign_cpus(gpus, cpus)[1]}")
    for command in commands:
        print(command.describe(), flush=True)
    if args.dry_run:
        return 0
    return run(commands)
