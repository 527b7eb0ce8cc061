"""How stable and how honest is the grader's timing? The benchmark issue 5 asks for.

For each case, the full measurement a grade uses (runner.harness.bench.measure_pair: two
sandboxed children, alternating blocks, fresh rows before each call, probes, the wall-clock
check) runs `--repeats` times, each in a fresh process, and the script reports the spread of
the medians it produced (coefficient of variation, CV). Right after each run, the same kernel
is timed in the same fresh process, once the sandboxed children are gone, by the reference
tool of the device:
`triton.testing.do_bench` on a GPU, `torch.utils.benchmark.Timer.blocked_autorange` on CPU.
Last, each torch kernel's median is placed on this node's measured roofline.

    python bench/measurement_noise.py --device cuda --out $OUT      # a GPU node (H100)
    .venv/bin/python bench/measurement_noise.py --device cpu --out /tmp/noise

Cases (cuda): `copy` x.clone() of 1 GiB (memory-bound, ~0.7 ms), `softmax` 16384x24576 fp32
torch.softmax against the naive composition (~1 ms), `matmul` 8192^3 fp16 against itself (an
A/A run; compute-bound, ~1.5 ms). Not in the default --cases, for the power cap: `matmul_small`
4096^3 fp16 and `matmul_fp32` 4096^3 fp32 on the CUDA cores (A/A, compute-bound). On cpu the
same kinds at CPU scale, one torch thread.
Results: a JSON file and a Markdown table in --out (written after each case);
docs/benchmarks/measurement.md keeps the runs that were recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    candidate: str  # runner.measure.kernels function
    baseline: str
    shapes: tuple[tuple[int, ...], ...]  # the inputs of one call; the first is row-mutated
    dtype: str
    bound: str  # "memory" or "compute"
    # bytes and FLOPs of one call, for the roofline
    bytes_moved: int
    flops: int
    peak_dtype: str
    atol: float
    rtol: float
    sets: int = 1
    block: int = 5


def cases(device: str) -> list[Case]:
    if device == "cuda":
        copy_rows, copy_cols = 8192, 32768  # 1 GiB of fp32
        sm_rows, sm_cols = 16384, 24576  # 1.5 GiB of fp32
        n = 8192
    else:
        copy_rows, copy_cols = 2048, 8192  # 64 MiB, well past this machine's caches
        sm_rows, sm_cols = 256, 2000
        n = 512
    cases_ = [
        Case(
            "copy", "copy", "copy", ((copy_rows, copy_cols),), "float32", "memory",
            bytes_moved=2 * copy_rows * copy_cols * 4, flops=0, peak_dtype="fp32",
            atol=0, rtol=0,
        ),
        Case(
            "softmax", "softmax", "naive_softmax", ((sm_rows, sm_cols),), "float32", "memory",
            bytes_moved=2 * sm_rows * sm_cols * 4, flops=5 * sm_rows * sm_cols,
            peak_dtype="fp32", atol=1e-6, rtol=1e-5,
        ),
        Case(
            "matmul", "matmul", "matmul", ((n, n), (n, n)),
            "float16" if device == "cuda" else "float32", "compute",
            bytes_moved=3 * n * n * (2 if device == "cuda" else 4), flops=2 * n**3,
            # numpy has no bfloat16, so fp16 crosses the protocol; on Hopper fp16 and bf16
            # tensor-core rates are the same, and the node measures bf16.
            peak_dtype="bf16" if device == "cuda" else "fp32",
            atol=1e-2, rtol=1e-2, sets=2,
        ),
    ]  # fmt: skip
    if device == "cuda":
        # Two more compute-bound cases, for the power cap (docs/benchmarks/measurement.md): the
        # 8192^3 fp16 matmul keeps an H100 at its power cap, so whole-process medians move with
        # the card's power management. A matmul an eighth of the size, whose samples are
        # separated by the cache flush, and an fp32 one on the CUDA cores (TF32 off, torch's
        # default) load the card differently; both stay compute-bound (hundreds of FLOPs per
        # byte).
        k = 4096
        cases_ += [
            Case(
                "matmul_small", "matmul", "matmul", ((k, k), (k, k)), "float16", "compute",
                bytes_moved=3 * k * k * 2, flops=2 * k**3, peak_dtype="bf16",
                atol=1e-2, rtol=1e-2, sets=2,
            ),
            Case(
                "matmul_fp32", "matmul", "matmul", ((k, k), (k, k)), "float32", "compute",
                bytes_moved=3 * k * k * 4, flops=2 * k**3, peak_dtype="fp32",
                atol=1e-4, rtol=1e-4, sets=2,
            ),
        ]  # fmt: skip
    return cases_


# -- child: one full measurement ---------------------------------------------------------


def child_pair(case: Case, device: str, seed: int, time_cap_s: float) -> dict[str, Any]:
    from runner.harness.bench import BenchPolicy, RowOperation, measure_pair
    from runner.harness.client import Entry, ServedFunction
    from runner.harness.correctness import compare_output
    from runner.sandbox import ResourceLimits, SandboxPolicy

    policy = SandboxPolicy.from_env()
    dtype = np.dtype(case.dtype)
    shapes = case.shapes

    def make(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        # uniform in [-3, 3): several times faster to draw than normal values at 1.5 GiB
        return (rng.random(shape, dtype=np.float32) * 6 - 3).astype(dtype, copy=False)

    converted: dict[int, np.ndarray] = {}

    def reference_rows(
        rows: np.ndarray, others: list[np.ndarray], _indices: np.ndarray
    ) -> np.ndarray:
        x = rows.astype(np.float64)
        if case.candidate == "copy":
            return x
        if case.candidate == "softmax":
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        # The other factor is never mutated: convert it once per set, not per probe.
        key = id(others[0])
        if key not in converted:
            converted[key] = others[0].astype(np.float32)
        return rows.astype(np.float32) @ converted[key]

    def compare(got: np.ndarray | None, expected: np.ndarray) -> Any:
        # a matmul over thousands of terms: compare to the float64 product with a scaled bound
        scale = float(np.abs(expected).max(initial=1.0)) if case.candidate == "matmul" else 1.0
        return compare_output(
            got=got, expected=expected, dtype=case.dtype, atol=case.atol * scale, rtol=case.rtol
        )

    operation = RowOperation(
        make_set=lambda r: [make(r, s) for s in shapes],
        make_rows=lambda r, k: make(r, (k, *shapes[0][1:])),
        reference_rows=reference_rows,
        compare=compare,
    )
    work = Path(tempfile.mkdtemp(prefix="noise-"))
    limits = ResourceLimits(cpu_seconds=600, file_size_bytes=1 << 20, memory_bytes=64 << 30)
    threads = 1 if device == "cpu" else 0

    def served(name: str, function: str) -> ServedFunction:
        (work / name).mkdir()
        return ServedFunction(
            entry=Entry(label=f"the {name}", trusted=f"runner.measure.kernels:{function}"),
            policy=policy,
            jobdir=work / name,
            log_path=work / f"{name}.log",
            limits=limits,
            device=device,
            threads=threads,
            max_payload_bytes=1 << 34,
        )

    started = time.monotonic()
    sampler: Any = contextlib.nullcontext()
    if device == "cuda":
        from runner.gpu import gpu_indices, nvml_index_of_minor
        from runner.measure.telemetry import TelemetrySampler

        # The GPU the sandboxes get (RUNNER_GPU_DEVICES), by NVML's index for it.
        minors = gpu_indices(policy.gpu_devices)
        sampler = TelemetrySampler(index=nvml_index_of_minor(minors[0]) if minors else 0)
    try:
        with (
            served("candidate", case.candidate) as cand,
            served("baseline", case.baseline) as base,
        ):
            cand.wait_ready(timeout_s=120)
            base.wait_ready(timeout_s=120)
            with sampler:
                result = measure_pair(
                    candidate=cand,
                    baseline=base,
                    operation=operation,
                    policy=BenchPolicy(
                        sets=case.sets,
                        block=case.block,
                        min_samples=30,
                        time_cap_s=time_cap_s,
                    ),
                    rng=np.random.default_rng(seed),
                    timeout_s=120,
                    baseline_broken=RuntimeError,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from runner.measure.stats import speedup, summarize

    cand_s, base_s = result.candidate.samples, result.baseline.samples
    return {
        "candidate": summarize(cand_s).scaled(1e-3).to_dict(),
        "baseline": summarize(base_s).scaled(1e-3).to_dict(),
        "speedup": speedup(baseline=base_s, candidate=cand_s).to_dict(),
        "stop_reason": result.stop_reason,
        "checks": result.checks,
        "method": result.method,
        "telemetry": sampler.summary() if device == "cuda" else None,
        "wall_s": round(time.monotonic() - started, 2),
        # The sandboxed children are gone; the device's own tool times the same kernel in
        # this process now, right after, so both see the GPU in the same state.
        "tool": child_reference_tool(case, device),
    }


# -- child: the device's reference tool on the same kernel -------------------------------


def child_reference_tool(case: Case, device: str) -> dict[str, Any]:
    import torch

    from runner.measure import kernels

    if device == "cpu":
        torch.set_num_threads(1)
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = getattr(torch, case.dtype)
    inputs = [
        (torch.rand(s, generator=generator, device=device, dtype=torch.float32) * 6 - 3).to(dtype)
        for s in case.shapes
    ]
    function = getattr(kernels, case.candidate)
    if device == "cuda":
        import triton
        import triton.testing

        times = triton.testing.do_bench(lambda: function(*inputs), return_mode="all")
        tool = f"triton.testing.do_bench (triton {triton.__version__}), return_mode='all'"
        samples_us = [t * 1e3 for t in times]
    else:
        from torch.utils import benchmark

        measurement = benchmark.Timer(
            stmt="f(*xs)", globals={"f": function, "xs": inputs}, num_threads=1
        ).blocked_autorange(min_run_time=2.0)
        samples_us = [t * 1e6 for t in measurement.times]
        tool = "torch.utils.benchmark.Timer.blocked_autorange(min_run_time=2.0), 1 thread"
    return {
        "tool": tool,
        "n": len(samples_us),
        "median_us": statistics.median(samples_us),
        "mean_us": statistics.fmean(samples_us),
        "std_us": statistics.stdev(samples_us) if len(samples_us) > 1 else 0.0,
        "min_us": min(samples_us),
        "max_us": max(samples_us),
    }


# -- parent ------------------------------------------------------------------------------


def run_child(args: list[str], timeout: float = 600) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--time-cap", type=float, default=3.0)
    parser.add_argument("--cases", default="copy,softmax,matmul")
    parser.add_argument("--out", type=Path, default=Path("var/measurement-noise"))
    parser.add_argument("--child", choices=("pair",))
    parser.add_argument("--case")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    by_name = {c.name: c for c in cases(args.device)}
    if args.child == "pair":
        case = by_name[args.case]
        pair = child_pair(case, args.device, args.seed, args.time_cap)
        print(json.dumps(pair))
        return 0

    from runner.environment import describe_environment
    from runner.measure.node_peaks import node_peaks
    from runner.measure.roofline import Workload, assess

    args.out.mkdir(parents=True, exist_ok=True)
    peaks, why = node_peaks(args.device, threads=1 if args.device == "cpu" else 0)
    print(f"peaks: {peaks.to_dict() if peaks else why}", flush=True)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": args.device,
        "host": platform.node(),
        "environment": describe_environment(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "peaks": peaks.to_dict() if peaks else {"unavailable": why},
        "cases": {},
    }
    for name in args.cases.split(","):
        case = by_name[name]
        runs, tools = [], []
        for repeat in range(args.repeats):
            common = ["--device", args.device, "--case", name, "--time-cap", str(args.time_cap)]
            runs.append(run_child(["--child", "pair", "--seed", str(repeat + 1), *common]))
            tools.append(runs[-1].pop("tool"))
            telemetry = runs[-1].get("telemetry") or {}
            clock = (telemetry.get("sm_clock_mhz") or {}).get("median")
            print(
                f"{name} #{repeat + 1}: ours {runs[-1]['candidate']['median']:.2f} us "
                f"(n={runs[-1]['candidate']['n']}, {runs[-1]['stop_reason']}), speedup "
                f"{runs[-1]['speedup']['value']:.3f}; tool {tools[-1]['median_us']:.2f} us"
                + (
                    f"; SM clock median {clock} MHz, {telemetry.get('clock_event_reasons')}"
                    if clock
                    else ""
                ),
                flush=True,
            )
        medians = [r["candidate"]["median"] for r in runs]
        tool_medians = [t["median_us"] for t in tools]
        summary = {
            "runs": runs,
            "tool_runs": tools,
            "ours_median_of_medians_us": statistics.median(medians),
            "ours_cv_of_medians": cv(medians),
            "tool_median_of_medians_us": statistics.median(tool_medians),
            "tool_cv_of_medians": cv(tool_medians),
            "ours_vs_tool": statistics.median(medians) / statistics.median(tool_medians),
            "speedups": [r["speedup"]["value"] for r in runs],
        }
        if peaks is not None:
            workload = Workload(bytes_moved=case.bytes_moved, flops=case.flops)
            assessed = assess(
                workload,
                statistics.median(medians) / 1e6,
                peaks,
                case.peak_dtype if case.flops else None,
            )
            summary["roofline"] = assessed.to_dict()
        results["cases"][name] = summary
        # After each case, so a run cut short by a time limit keeps the cases it finished.
        stem = f"measurement-noise-{args.device}"
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1))
        table = markdown(results)
        (args.out / f"{stem}.md").write_text(table)
    print(table)
    return 0


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['device']} on {results['host']}, {results['date']}: "
        f"{results['environment'].get('gpu') or results['environment'].get('cpu')}",
        "",
        "| case | ours: median of medians (us) | ours: CV of medians | tool: median (us) | "
        "tool: CV of medians | ours / tool | speedups (min-max) | % of roofline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, case in results["cases"].items():
        roof = case.get("roofline", {})
        percent = f"{roof['percent_of_roofline']:.1f}% ({roof['bound']})" if roof else "n/a"
        lines.append(
            f"| {name} | {case['ours_median_of_medians_us']:.2f} | "
            f"{case['ours_cv_of_medians'] * 100:.2f}% | {case['tool_median_of_medians_us']:.2f} | "
            f"{case['tool_cv_of_medians'] * 100:.2f}% | {case['ours_vs_tool']:.3f} | "
            f"{min(case['speedups']):.3f}-{max(case['speedups']):.3f} | {percent} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
