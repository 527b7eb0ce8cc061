"""Eager and CUDA-graphed decode of the quantization lab's models, side by side, on random
weights of a real model's shape: is graphed decode the measure that grades INT4 decode speed?

    python bench/quant_decode_graphs.py [--shape llama-2-7b] [--rounds 3] [--out DIR]

For bf16 and the reference solution's INT4 and INT8 (notebooks/quantization/reference.ipynb,
its `quantize`), at each batch: eager decode tokens/s (what the lab graded until 2026-11-27)
and graphed decode tokens/s (runner.graders.quantization_measure.graphed_decode_speed, what
the grader measures now), both through the grader's own functions, in `--rounds` rounds so
the spread shows. docs/labs/quantization.md records the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.graders import quantization_measure as measure  # noqa: E402
from runner.llm.architecture import random_model  # noqa: E402


def reference_quantize():
    """The reference notebook's solution cells, loaded as the grader's child loads them."""
    import nbformat

    from runner.notebook import extract_solution

    notebook = Path(__file__).resolve().parents[1] / "notebooks/quantization/reference.ipynb"
    namespace: dict = {"__name__": "reference_solution"}
    exec(extract_solution(nbformat.read(notebook, as_version=4)).text, namespace)  # noqa: S102
    return namespace["quantize"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-2-7b")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="none,int4,int8")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    quantize = reference_quantize()
    batches = [int(b) for b in args.batches.split(",")]
    results: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "date": time.strftime("%Y-%m-%d"),
        "args": {k: str(v) for k, v in vars(args).items()},
        "methods": {},
    }
    for method in args.methods.split(","):
        torch.cuda.empty_cache()
        model = random_model(args.shape, device="cuda", dtype=torch.bfloat16)
        vocab = model.config.vocab_size
        if method != "none":
            model = quantize(model, method, group_size=args.group_size, calibration=None)
        rows = results["methods"][method] = {}
        for batch in batches:
            shape = {
                "batch": batch,
                "prompt": args.prompt,
                "new_tokens": args.tokens,
                "reps": args.reps,
                "vocab": vocab,
            }
            eager, graphed, problems = [], [], []
            for _ in range(args.rounds):
                eager.append(measure.decode_speed(model, **shape)["decode_tokens_per_s"])
                g = measure.graphed_decode_speed(model, **shape)
                if "graph_problem" in g:
                    problems.append(g["graph_problem"])
                else:
                    graphed.append(g["graphed_decode_tokens_per_s"])
            rows[str(batch)] = {"eager": eager, "graphed": graphed, "problems": problems}
            print(f"{method:5} batch {batch:3}: eager {eager} graphed {graphed} {problems[:1]}")
        del model
    print("\n| method | batch | eager tok/s | vs bf16 | graphed tok/s | vs bf16 |")
    print("|---|---|---|---|---|---|")
    base = results["methods"].get("none", {})
    for method, rows in results["methods"].items():
        for batch, row in rows.items():
            cells = []
            for kind in ("eager", "graphed"):
                mine = statistics.median(row[kind]) if row[kind] else None
                theirs = base.get(batch, {}).get(kind)
                ratio = mine / statistics.median(theirs) if mine and theirs else None
                cells += [f"{mine:.1f}" if mine else "-", f"{ratio:.2f}x" if ratio else "-"]
            print(f"| {method} | {batch} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "quant-decode-graphs.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
