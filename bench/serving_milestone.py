"""The Phase 2 milestone measured: "quantize a 7B LLM, serve it, and demonstrate 3x throughput
with <1% quality loss". Four engines on the same model, the same KV memory (blocks), the same
workload and the same SLO, each behind the OpenAI-compatible server and measured from outside
by the load harness (vLLM's definitions):

    static full       static batching (KV reserved for max_model_len), full-precision weights
                      (bf16 on CUDA, float32 on CPU)
    continuous full   the serving lab's reference scheduler and block manager
    static int4       the quantization lab's reference INT4 (g64; tinygemm on CUDA)
    continuous int4   both: the milestone's configuration

    python bench/serving_milestone.py --model llama-2-7b --device cuda --out DIR   # an H100
    python bench/serving_milestone.py --model trained --device cpu --requests 12   # a dry run

`--model trained` is the project's committed 3.8M model (its served INT4 tokens are compared
with bf16's); a shape of runner.llm.architecture.LARGE_SHAPES gives random weights of that
shape (speed only: quality is the quantization lab's, measured on trained weights). The
reference solutions are read from notebooks/ (serving/reference_solution.py and
quantization/reference.ipynb), as a learner's would be. Prints one table; --out keeps the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from runner.serving import lab_tools  # noqa: E402
from runner.serving.loadgen import RequestSpec, run_load_sync  # noqa: E402

CONFIGS = [
    ("static", "full"),
    ("continuous", "full"),
    ("static", "int4"),
    ("continuous", "int4"),
]


def load_solution(path: Path, name: str) -> dict[str, Any]:
    """The names a reference solution defines: a .py file, or a notebook's solution cells."""
    if path.suffix == ".ipynb":
        import nbformat

        from runner.notebook import extract_solution

        source = extract_solution(nbformat.read(path, as_version=4)).text
    else:
        source = path.read_text()
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - our own reference code
    return namespace


def int4_converter(quantization: dict[str, Any], group_size: int):
    """weight [out, in] -> the quantization reference's INT4 module (tinygemm where it fits)."""

    def convert(weight: torch.Tensor) -> nn.Module:
        shell = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        shell.weight = nn.Parameter(weight, requires_grad=False)
        module = quantization["int4_linear"](shell, group_size)
        fast = quantization["TinyGemmInt4Linear"]
        return fast(module) if fast.fits(module) else module

    return convert


def build_model(name: str, device: str, dtype: torch.dtype):
    from runner.llm import load_model
    from runner.llm.architecture import random_model

    if name == "trained":
        return load_model(device=device, dtype=dtype)
    torch.manual_seed(0)
    return random_model(name, device=device, dtype=dtype)


def requests_of(workload) -> list[RequestSpec]:
    return [
        RequestSpec(prompt=p, max_tokens=m, extra={"return_token_ids": True}, prompt_len=len(p))
        for p, m in zip(workload.prompts, workload.max_tokens, strict=True)
    ]


def measure(args, model, scheduler_kind: str, weights: str, solutions, workloads) -> dict:
    from runner.llm import load_tokenizer
    from runner.serving.engine import LLMEngine, PagedLlama

    settings = {
        "num_blocks": args.num_blocks,
        "block_size": args.block_size,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_model_len": args.max_model_len,
    }
    runner = PagedLlama(
        model,
        num_blocks=args.num_blocks,
        block_size=args.block_size,
        device=torch.device(args.device),
        dtype=getattr(torch, args.dtype),
    )
    if weights == "int4":
        runner.replace_weights(int4_converter(solutions["quantization"], args.group_size))
    gc.collect()
    if scheduler_kind == "static":
        scheduler = lab_tools.static_scheduler(settings)
    else:
        serving = solutions["serving"]
        scheduler = lab_tools.your_scheduler(
            serving["Scheduler"], serving["BlockManager"], settings
        )
    engine = LLMEngine(
        runner,
        scheduler,
        eos_token_id=load_tokenizer().eos_token_id,
        max_model_len=args.max_model_len,
    )
    result: dict[str, Any] = {
        "scheduler": scheduler_kind,
        "weights": weights,
        "weight_bytes": runner.weight_bytes(),
        "kv_cache_bytes": runner.kv_cache_bytes(),
    }
    with lab_tools.served_engine(engine, model_name="m") as url:
        run_load_sync(url, requests_of(workloads["warmup"]), model="m", timeout_s=600)
        started = time.perf_counter()
        burst = run_load_sync(
            url, requests_of(workloads["burst"]), model="m", timeout_s=1800, overall_timeout_s=1800
        )
        result["burst_wall_s"] = round(time.perf_counter() - started, 2)
        stream = run_load_sync(
            url,
            requests_of(workloads["stream"]),
            model="m",
            rate=args.rate,
            seed=1,
            timeout_s=1800,
            overall_timeout_s=1800,
        )
    slos = {"ttft": args.slo_ttft_ms}
    result["burst"] = burst.summary(percentiles=(50, 99), slos=slos)
    result["stream"] = stream.summary(percentiles=(50, 99), slos=slos)
    result["tokens"] = [o.token_ids for o in burst.outputs]
    result["steps"] = engine.num_steps
    result["preemptions"] = engine.num_preemptions
    del engine, runner, scheduler
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


def agreement(a: list[list[int] | None], b: list[list[int] | None]) -> float | None:
    """Fraction of generated positions where two runs chose the same token, compared up to each
    request's first difference (after it, the contexts differ)."""
    same = total = 0
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            return None
        total += len(x)
        for i, j in zip(x, y, strict=False):
            if i != j:
                break
            same += 1
    return same / total if total else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="trained")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(64, 512))
    parser.add_argument("--output-tokens", type=int, nargs=2, default=(32, 512))
    parser.add_argument("--num-blocks", type=int, default=2048)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=4096)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--rate", type=float, default=4.0, help="requests/s of the SLO run")
    parser.add_argument("--slo-ttft-ms", type=float, default=1000.0)
    parser.add_argument("--configs", default=",".join(f"{s}-{w}" for s, w in CONFIGS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    solutions = {
        "serving": load_solution(REPO / "notebooks/serving/reference_solution.py", "serving_ref"),
        "quantization": load_solution(REPO / "notebooks/quantization/reference.ipynb", "quant_ref"),
    }
    shape = {"prompt_tokens": tuple(args.prompt_tokens), "output_tokens": tuple(args.output_tokens)}
    workloads = {
        "warmup": lab_tools.sample_workload(8, seed=3, **shape),
        "burst": lab_tools.sample_workload(args.requests, seed=1, **shape),
        "stream": lab_tools.sample_workload(args.requests, seed=2, **shape),
    }
    model = build_model(args.model, args.device, getattr(torch, args.dtype))
    environment = {
        "model": args.model,
        "weights": "trained" if args.model == "trained" else "random weights of that shape",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "date": time.strftime("%Y-%m-%d"),
        "argv": sys.argv[1:],
    }
    print(json.dumps(environment))
    results = []
    for config in args.configs.split(","):
        scheduler_kind, weights = config.split("-")
        result = measure(args, model, scheduler_kind, weights, solutions, workloads)
        results.append(result)
        save(args, environment, results)  # after each: a run cut short keeps what it measured
        b, s = result["burst"], result["stream"]
        print(
            f"{config:16} out {b['output_throughput']:8.1f} tok/s"
            f"  burst {result['burst_wall_s']:6.1f} s"
            f"  stream p99 TTFT {s.get('p99_ttft_ms') or math.nan:9.1f} ms"
            f"  goodput {s.get('request_goodput') or 0:5.2f} req/s"
            f"  weights {result['weight_bytes'] / 1e9:.2f} GB"
            f"  steps {result['steps']}  preempted {result['preemptions']}",
            flush=True,
        )
    base = next((r for r in results if (r["scheduler"], r["weights"]) == ("static", "full")), None)
    for result in results:
        if base:
            result["throughput_vs_static_full"] = round(
                result["burst"]["output_throughput"] / base["burst"]["output_throughput"], 3
            )
            result["token_agreement_with_static_full"] = agreement(result["tokens"], base["tokens"])
        print(
            f"{result['scheduler']}-{result['weights']}: "
            f"{result.get('throughput_vs_static_full')}x static full precision, token agreement "
            f"{result.get('token_agreement_with_static_full')}"
        )
    save(args, environment, results)
    return 0


def save(args, environment: dict[str, Any], results: list[dict[str, Any]]) -> None:
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"serving-milestone-{args.model}-{args.device}.json"
        kept = [{k: v for k, v in r.items() if k != "tokens"} for r in results]
        (args.out / name).write_text(json.dumps({**environment, "results": kept}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
