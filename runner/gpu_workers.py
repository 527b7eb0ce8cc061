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
        return f"# GPU {self.gpu.index}: {self.gpu.name}, {jobs}\n{env} {shlex.join(self.argv)}"


def worker_commands(
    gpus: Sequence[GpuInfo],
    queues_in_use: set[str],
    *,
    python: str = sys.executable,
    concurrency: int = 1,
    loglevel: str = "INFO",
) -> list[WorkerCommand]:
    commands = []
    for gpu in gpus:
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
        commands.append(WorkerCommand(gpu=gpu, queues=queues, argv=argv, env=env))
    return commands


def run(commands: Sequence[WorkerCommand], *, poll_s: float = 0.5) -> int:
    """Start every worker, forward stop signals, return the first worker's exit status."""
    processes = [
        subprocess.Popen(command.argv, env={**os.environ, **command.env}) for command in commands
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
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    from runner.labspec import load_lab_specs

    gpus = discover_gpus()
    if not gpus:
        print("no GPU found by NVML: nothing to start", file=sys.stderr)
        return 1
    commands = worker_commands(
        gpus,
        lab_queues(load_lab_specs()),
        concurrency=args.share,
        loglevel=args.loglevel,
    )
    for command in commands:
        print(command.describe(), flush=True)
    if args.dry_run:
        return 0
    return run(commands)
