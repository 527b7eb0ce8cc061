"""This node's roofline peaks, for graders: measured once per node, in a separate process.

The worker process itself never touches CUDA (a context would hold ~500 MiB of GPU memory and
spoil the GPU memory check, runner.gpu), so the grader runs
`python -m runner.measure.node_peaks` and reads the peaks it prints. That process measures on
first use and caches the result in RUNNER_CACHE_DIR (runner.measure.peaks_cache), so later
jobs only pay for starting Python and reading a file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from runner.measure.peaks import Peaks

CACHE_ENV = "RUNNER_CACHE_DIR"


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "inference-roadmap"


def node_peaks(
    device: str, *, threads: int = 0, timeout_s: float = 300
) -> tuple[Peaks | None, str | None]:
    """(peaks, None), or (None, why not) when they could not be measured."""
    argv = [
        sys.executable,
        "-m",
        "runner.measure.node_peaks",
        "--device",
        device,
        "--cache",
        str(cache_dir() / "peaks"),
        "--threads",
        str(threads),
    ]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=Path(__file__).resolve().parents[2],
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"measuring this node's peaks took over {timeout_s:g} s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"measuring this node's peaks failed: {last[:300]}"
    try:
        return Peaks.from_dict(json.loads(done.stdout.strip().splitlines()[-1])), None
    except (ValueError, IndexError, TypeError) as exc:
        return None, f"the peaks process printed something unreadable ({exc})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.measure.node_peaks")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    from runner.measure.peaks_cache import load_or_measure_peaks

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    peaks = load_or_measure_peaks(args.cache, args.device)
    print(json.dumps(peaks.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
