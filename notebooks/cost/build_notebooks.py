"""Write the cost lab's notebooks: the starter, the reference solution and the test fixtures.

Run from the repository root after changing any notebook text here, or runner/cost/ (the
notebook carries a copy of the grader's simulator, the catalogue and the model shapes):

    .venv/bin/python notebooks/cost/build_notebooks.py

The generated .ipynb files are committed; tests read them as real uploads would arrive, and
tests/runner/test_cost_lab.py checks that the copy in the notebook matches runner/cost/.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURES = HERE / "fixtures"
sys.path.insert(0, str(REPO))

from runner.cost.catalogue import load_catalogue  # noqa: E402
from runner.cost.dashboard import alert_threshold, cost_report, synthetic_log  # noqa: E402
from runner.cost.shapes import load_models  # noqa: E402

LOCKED = {"deletable": False, "editable": False, "tags": ["protected"]}

# The modules of runner/cost/ the notebook carries, in dependency order. Not the grader's
# planner (optimise.py: it is the bar you are compared with) and not dashboard.py (it is
# exercise 2's answer).
INLINED = (
    "catalogue",
    "shapes",
    "roofline",
    "traffic",
    "simulate",
    "metrics",
    "fleet",
    "evaluate",
    "queueing",
    "plots",
)

EXAMPLE_WORKLOAD = {
    "name": "example",
    "peak_rps": 10_000,
    "prompt_tokens": {"distribution": "lognormal", "mean": 600, "sigma": 0.6, "max": 4096},
    "output_tokens": {"distribution": "lognormal", "mean": 180, "sigma": 0.6, "max": 1024},
    "slo": {"ttft_p99_s": 1.0, "tpot_p99_s": 0.06},
    "burst": {"multiplier": 1.8, "duration_s": 3.0, "ttft_p99_s": 1.25},
    "precisions": ["bf16", "fp8"],
    "routing": ["round_robin", "least_loaded"],
}
EXAMPLE_LOG_PRICE = 2.5

INTRO = """\
# Production & cost: design and defend an inference fleet for 10K+ requests/s

**Milestone:** *Production Systems & Cost Optimization* - "design and defend an inference
architecture for a production LLM system serving 10K+ RPS with full cost and latency
analysis".

A chat service built on an open LLM must answer 10,000 requests per second at its daily peak,
with the first token within a second and a steady stream after it, through traffic bursts,
at the lowest cost. Which GPU? How many replicas, each over how many GPUs? bf16 or fp8? How
large a batch? How does the fleet follow the day? In this lab you answer with numbers.

**What you will do**
1. Learn the cost model of LLM serving, with worked numbers: weight and KV-cache memory, the
   decode and prefill rooflines, the batch where decode turns compute-bound, requests per
   second per replica (Little's law), queueing and headroom, cost per 1K tokens.
2. Use the grader's own fleet simulator (copied into this notebook) to check a plan.
3. Write `plan_fleet(workload, catalogue)`: the grader calls it on scenarios drawn from a
   secret seed (10K requests/s and up), simulates your fleet at peak and through a burst, and
   prices your day against its own best plan.
4. Defend your plan in writing (the cell tagged `defence`; your instructor grades it).
5. Exercise 2, the *inference cost dashboard*: `cost_report(log, price, threshold)` from a
   fleet's GPU telemetry and request log.

**Read** (the first four are on the roadmap's list for this phase):
- AWS, [Deploy models for inference](https://docs.aws.amazon.com/sagemaker/latest/dg/deploy-model.html)
  (SageMaker): real-time endpoints, autoscaling policies on requests per instance.
- NVIDIA, [Nsight Systems](https://docs.nvidia.com/nsight-systems/): where a real step's time
  goes, to check the model below on your own GPU.
- The [Anyscale](https://www.anyscale.com/blog) and [Databricks](https://www.databricks.com/blog)
  engineering blogs: LLM serving benchmarks, continuous batching, cost per token.
- Cloud GPU pricing and utilisation analysis (the roadmap lists no single page; the catalogue
  below says where its prices come from).
- Not on the roadmap's list, but the sources of the model: Kwon et al., *Efficient Memory
  Management for LLM Serving with PagedAttention* ([arXiv:2309.06180](https://arxiv.org/abs/2309.06180))
  for the KV cache and vLLM; Yu et al., *Orca* (OSDI 2022) for continuous (iteration-level)
  batching; Williams et al., *Roofline* (CACM 2009); Kleinrock, *Queueing Systems*, vol. 1,
  for M/M/c and Erlang C.
"""

SETUP_MD = """\
## Setup

This notebook needs Python 3.11+ and numpy, nothing else: no GPU, no model download. Plots are
SVG drawn by the cell below (the project has no matplotlib).
"""

SETUP_CODE = """\
from __future__ import annotations  # the cells below annotate with names defined later

import numpy as np
from IPython.display import SVG, display

print("numpy", np.__version__)
"""

CATALOGUE_MD = """\
## The hardware catalogue

Every figure below carries its source; `plan_fleet` receives exactly this data as
`catalogue`. The speed figures of NVIDIA's datasheets are **dense** (their tables print
twice as much "with sparsity"). Two entries are **measured by this project** on real cards
(`docs/benchmarks/measurement.md`): on an **NVIDIA H100 80GB HBM3** (2026-11-27, driver
580.159.04, CUDA 13.0, torch 2.11.0+cu130) a 1 GiB device copy moved **3.006 TB/s** (90% of
the datasheet's 3.35 TB/s) and a bf16 8192^3 matmul ran at **783-803 TFLOP/s** (79-81% of
989); on an **H200**, **4.23 TB/s** and **801 TFLOP/s**. **Prices are assumptions**, order of
magnitude from public on-demand GPU-cloud list prices in late 2025 (the catalogue's
`price_source` says where): change them, and every cost in this notebook follows.

The `assumptions` are the engine's: the fraction of bandwidth a decode step reaches (0.8),
of FLOP/s a prefill reaches (0.5), a fixed overhead per step (2 ms), the memory an engine
takes (0.9, vLLM's default `--gpu-memory-utilization`), what tensor parallelism keeps (0.85),
and the prompt tokens one step may prefill (2048).
"""

CATALOGUE_CODE_HEAD = """\
# The grader's catalogue (runner/cost/catalogue.toml) and model shapes (models.toml), as data.
"""

CATALOGUE_CODE_TAIL = """\

columns = ("GPU", "basis", "memory", "bandwidth", "bf16", "fp8", "$/h")
print("{:22s} {:9s} {:>8s} {:>10s} {:>9s} {:>9s} {:>5s}".format(*columns))
for name, gpu in CATALOGUE["gpus"].items():
    flops = gpu["flops_per_s"]
    fp8 = f"{flops['fp8'] / 1e12:7.0f} T" if "fp8" in flops else "      -  "
    print(
        f"{name:22s} {gpu['basis']:9s} {gpu['memory_bytes'] / 1e9:6.0f}GB "
        f"{gpu['bandwidth_bytes_per_s'] / 1e12:7.3f}TB/s {flops['bf16'] / 1e12:7.0f} T {fp8} "
        f"{gpu['price_per_hour']:5.2f}"
    )
"""

SIMULATOR_MD = """\
## The grader's model and simulator (read it, run it, do not edit it)

The next cell is a copy of the grader's own code, `runner/cost/` of this project, made when
this notebook was built: the catalogue and model classes, the roofline (`Deployment`), the
traffic generator, the **discrete-event fleet simulator** (`simulate_fleet`), the metrics,
plan validation (`parse_plan`), the evaluation the grader runs (`evaluate_plan`), closed-form
queueing (`erlang_c`) and the SVG plots. It is long; skim the docstrings. The cells after it
use it for worked numbers, and you can use it to check your plan before you submit.

How the simulator works, in short: requests arrive (Poisson, with a burst); a router sends
each to a replica (`least_loaded` or `round_robin`); each replica runs **continuous
batching**: at every engine step it admits waiting requests while the batch has room, their
KV cache fits and the step's prefill budget lasts, prefills them, and decodes one token for
every running sequence. A step takes the roofline time of what it does. One event per
replica step, never per token: 10K requests/s for minutes of traffic simulate in seconds.
"""

MEMORY_MD = """\
## 1. Memory: weights and the KV cache

A replica must hold the weights, `params x bytes per parameter`, and a key and a value vector
per layer for every token of every running sequence:

$$\\text{KV bytes per token} = 2 \\times \\text{layers} \\times \\text{kv\\_heads} \\times
\\text{head\\_dim} \\times \\text{bytes}$$

**Worked numbers** (Llama-3.1-8B, `config.json` on the Hugging Face hub: 32 layers, 8 KV
heads of 128 dimensions, 8.03e9 parameters): in bf16 the weights are 8.03e9 x 2 = **16.06
GB**, and each token adds 2 x 32 x 8 x 128 x 2 = **131,072 bytes** (128 KiB). On an H100
80GB with the engine taking 90%, that leaves 72 - 16.06 = 55.9 GB, **427K tokens** of KV
cache: 580 sequences of 736 tokens (prompt 600 + output 136, say). Llama-2-7B, with as many
KV heads as query heads (32, no grouped-query attention), needs **4x** the KV bytes per
token. fp8 halves both weights and KV. Llama-3.1-70B in bf16 is 141 GB of weights: it does
not fit one 80 GB card (a replica over 2+ GPUs, or fp8 on an H200).
"""

MEMORY_CODE = """\
catalogue = Catalogue.from_plain(CATALOGUE)
models = {name: ModelShape.from_plain(m) for name, m in MODELS.items()}
llama8, llama70, llama2 = models["llama-3.1-8b"], models["llama-3.1-70b"], models["llama-2-7b"]

for model in (llama8, llama2, llama70):
    for precision in ("bf16", "fp8"):
        size = PRECISION_BYTES[precision]
        print(
            f"{model.name:14s} {precision}: weights {model.weight_bytes(size) / 1e9:6.2f} GB, "
            f"KV {model.kv_bytes_per_token(size):7.0f} bytes/token"
        )
h100 = Deployment(llama8, catalogue.gpu("H100-SXM-80GB"), "bf16", 1, catalogue.assumptions)
print(f"\\nLlama-3.1-8B bf16 on one H100: {h100.kv_budget_tokens:,} tokens of KV cache fit")
print(f"  = {h100.kv_budget_tokens // 736} sequences of 600 + 136 tokens")
"""

DECODE_MD = """\
## 2. Decode: a memory-bound roofline

Generating one token for each of `batch` running sequences reads **every weight once** and
every sequence's KV cache; it does about 2 x params FLOPs per sequence. While the bytes take
longer than the FLOPs, the step is **memory-bound**:

$$t_\\text{decode} \\gtrsim \\frac{\\text{weight bytes} + \\text{batch} \\times
\\text{context} \\times \\text{KV bytes per token}}{\\text{bandwidth} \\times
\\text{efficiency}}$$

**Worked numbers**: at batch 1 and short context, Llama-3.1-8B in bf16 reads 16.06 GB per
token: 16.06e9 / 3.35e12 = **4.8 ms** on the H100's datasheet bandwidth, 16.06e9 / 3.006e12 =
**5.3 ms** on the bandwidth we measured (docs/benchmarks/measurement.md): at most ~190-210
tokens/s for one user, whatever the FLOP/s. At batch 64 the weights are read once for 64
tokens: nearly 64x the throughput for a slightly longer step. That is why serving engines
batch, and why bandwidth per dollar, not FLOP/s, prices decode.

The model adds the catalogue's efficiency (0.8 of the bandwidth figure) and a 2 ms overhead
per step.
"""

DECODE_CODE = """\
measured = Deployment(llama8, catalogue.gpu("H100-80GB-measured"), "bf16", 1, catalogue.assumptions)
print("batch-1 floor (no efficiency, no overhead):")
print(f"  datasheet 3.35 TB/s : {h100.weight_bytes / 3.35e12 * 1e3:.2f} ms per token")
print(f"  measured 3.006 TB/s : {measured.weight_bytes / 3.006e12 * 1e3:.2f} ms per token")
print("\\nthe model's decode step at 736 tokens of context (H100 datasheet entry):")
for batch in (1, 8, 64, 256):
    step = h100.decode_step_time(batch=batch, context=736)
    print(f"  batch {batch:4d}: {step * 1e3:6.2f} ms per step, {batch / step:8.0f} tokens/s")
"""

PREFILL_MD = """\
## 3. Prefill: compute-bound

A prompt of n tokens is processed in one pass: the weights are read once, but every token
multiplies through all of them, so the FLOPs dominate:

$$t_\\text{prefill} \\approx \\frac{2 \\times \\text{params} \\times n}{\\text{FLOP/s} \\times
\\text{efficiency}}$$

**Worked numbers**: a 1,000-token prompt on Llama-3.1-8B is 2 x 8.03e9 x 1000 = 1.6e13 FLOPs:
**16 ms** at the H100's dense bf16 989 TFLOP/s, **20.5 ms** at the 783 TFLOP/s we measured,
and 32 ms at the model's 50% efficiency. In a continuously batched engine, prefills share
steps with decodes: a step that prefills 2048 prompt tokens makes every running sequence's
next token wait for it. That is what sets p99 time per output token on GPUs with few FLOP/s.
"""

PREFILL_CODE = """\
flops = 2 * llama8.params * 1000
print(f"1000-token prompt: {flops:.3g} FLOPs")
print(f"  at 989 TFLOP/s (datasheet, dense): {flops / 989.4e12 * 1e3:5.1f} ms")
print(f"  at 783 TFLOP/s (measured)        : {flops / 783e12 * 1e3:5.1f} ms")
print(f"  the model (50% of datasheet + 2 ms): {h100.prefill_time(1000) * 1e3:5.1f} ms")
l40s = Deployment(llama8, catalogue.gpu("L40S-48GB"), "fp8", 1, catalogue.assumptions)
print(f"a step with a full 2048-token prefill: H100 bf16 {h100.prefill_time(2048) * 1e3:.0f} ms, "
      f"L40S fp8 {l40s.prefill_time(2048) * 1e3:.0f} ms")
"""

RIDGE_MD = """\
## 4. Where decode turns compute-bound

Each sequence added to a decode batch adds 2 x params FLOPs and its context's KV bytes. The
step is memory-bound until

$$\\text{batch}^* = \\frac{\\text{weight bytes} / \\text{bandwidth}}{2 \\times
\\text{params} / \\text{FLOP/s} - \\text{context} \\times \\text{KV bytes per token} /
\\text{bandwidth}}$$

With no context this is bytes per parameter x FLOP/s / (2 x bandwidth): for the H100 in
bf16, 2 x 989e12 / (2 x 3.35e12) = **295**, the roofline's ridge point; with the measured
figures, 2 x 783e12 / (2 x 3.006e12) = **260**. Context pushes it out: each sequence's KV
bytes grow with its context while its FLOPs do not, and past a few thousand tokens of
context decode never turns compute-bound. (The model's efficiencies move the numbers; the
cell prints both.)
"""

RIDGE_CODE = """\
print(f"datasheet ridge: {2 * 989.4e12 / (2 * 3.35e12):.0f} sequences;  "
      f"measured: {2 * 783e12 / (2 * 3.006e12):.0f}")
for context in (0, 512, 2048, 8192):
    batch = h100.compute_bound_batch(context=context)
    print(f"  the model, context {context:5d}: compute-bound above batch {batch:8.1f}")
"""

CAPACITY_MD = """\
## 5. Requests per second per replica, queueing and headroom

A request spends about `output` steps in the batch (its prefill step gives the first token),
so by **Little's law** a replica that keeps `batch` sequences running serves

$$\\lambda = \\frac{\\text{batch}}{\\text{output tokens} \\times t_\\text{step}}$$

requests per second, where each step also prefills the prompts of the requests that join:
batch x prompt / output tokens on average, at most the prefill budget. A larger batch serves
more, with slower steps (TPOT). `Deployment.capacity` finds the largest batch whose slowest
common step (one carrying a full prefill budget) stays under a TPOT target.

**Queueing**: requests arrive at random. Even a fleet with capacity to spare makes some
wait, and the wait explodes as utilisation nears 100%: for an M/M/c queue (Poisson arrivals,
c servers, exponential service) the chance of waiting is the **Erlang C** formula. With 100
servers of 1 request/s, a load of 80 makes 2% of requests wait (1 ms on average), a load of 90
makes 22% wait (22 ms), a load of 99 makes 88% wait (0.88 s): the last 10% of utilisation
costs 40x the waiting.
Engines with continuous batching bend this (a busy replica runs a bigger batch), but not
forever: the batch is bounded by memory, by the prefill budget and by your TPOT target. A
**burst** above capacity builds a backlog of (burst - capacity) x duration requests that must
drain within the burst's TTFT target: that, or batch room, is the **headroom** you pay for.
"""

CAPACITY_CODE = """\
workload = Workload.from_plain({**EXAMPLE_WORKLOAD, "model": MODELS["llama-3.1-8b"],
                                "daily_curve": EXAMPLE_CURVE})
p, o = workload.prompt_tokens.mean, workload.output_tokens.mean
for name, precision in (("H100-SXM-80GB", "bf16"), ("H100-SXM-80GB", "fp8"), ("L40S-48GB", "fp8")):
    d = Deployment(llama8, catalogue.gpu(name), precision, 1, catalogue.assumptions)
    rate, batch, step = d.capacity(max_batch=1024, mean_prompt=p, mean_output=o,
                                   step_time_limit=0.85 * workload.slo.tpot_p99_s)
    if rate == 0:
        print(f"{name} {precision}: no batch meets the TPOT target")
        continue
    print(f"{name} {precision}: batch {batch:5.0f}, step {step * 1e3:5.1f} ms, "
          f"{rate:6.1f} requests/s per replica -> {math.ceil(workload.peak_rps / rate)} replicas")

print("\\nErlang C, 100 servers of 1 request/s:")
for load in (80, 90, 95, 99):
    wait = mmc_mean_wait(arrival_rate=load, service_rate=1.0, servers=100)
    print(f"  load {load}: P(wait) = {erlang_c(100, load):.3f}, mean wait {wait * 1e3:7.1f} ms")
"""

COST_MD = """\
## 6. Cost: per day, per 1K tokens, per request, and the Pareto front

A fleet costs GPUs x hours x price. Divide by what it served:

$$\\text{cost per 1K tokens} = \\frac{\\text{GPU-hours} \\times \\text{price}}{\\text{output
tokens} / 1000}, \\qquad \\text{requests per dollar} = \\frac{\\text{requests}}{\\text{GPU-hours}
\\times \\text{price}}$$

Compare GPUs by **cost per request served at your latency target**, never by price per hour:
an L40S costs a third of an H100 per hour but serves far fewer requests per second. The plot
sizes every catalogue configuration with the roofline for the example workload and puts its
cost per day against its step time (a proxy for TPOT): the **Pareto front** joins the plans
that nothing beats on both.
"""

COST_CODE = """\
points = []
for gpu in catalogue.gpus.values():
    for precision in workload.precisions:
        if not gpu.supports(precision):
            continue
        for gpus in (1, 2, 4, 8):
            if gpus > gpu.max_gpus_per_replica:
                continue
            d = Deployment(llama8, gpu, precision, gpus, catalogue.assumptions)
            try:
                d.check_fits(tokens_per_request=workload.max_tokens_per_request)
            except DoesNotFit:
                continue
            for target in (0.03, 0.045, 0.06):
                rate, batch, step = d.capacity(max_batch=1024, mean_prompt=p, mean_output=o,
                                               step_time_limit=target)
                if rate == 0:
                    continue
                replicas = math.ceil(workload.peak_rps / rate)
                plan = FleetPlan(gpu.name, gpus, precision, math.floor(batch), "least_loaded",
                                 replicas, 1, workload.peak_rps / replicas)
                day = daily_cost(plan, workload, catalogue)
                points.append((step * 1e3, day["cost"], f"{gpu.name} {precision} x{gpus}"))
front = [points[i] for i in pareto_front([(x, y) for x, y, _ in points])]
for step, cost, label in front:
    print(f"on the front: {label:28s} step {step:5.1f} ms, ${cost:8,.0f} per day")
display(SVG(cost_latency_svg(points=points, title="Example workload: cost vs step time",
                             x_label="step time at the peak's batch (ms)")))
"""

DAY_MD = """\
## 7. Autoscaling over the day

Traffic follows the day; a fleet sized for the peak idles at night. An autoscaling policy on
requests per replica (`target_rps_per_replica`, as SageMaker's target tracking on
invocations per instance) runs `ceil(rate / target)` replicas each hour, between
`min_replicas` and the peak's `replicas`. The grader prices your plan hour by hour over the
workload's `daily_curve`. It requires `target_rps_per_replica <= peak_rps / replicas`: an
off-peak replica may not run hotter than the peak you proved in simulation.
"""

DAY_CODE = """\
plan = FleetPlan("H100-SXM-80GB", 1, "fp8", 512, "least_loaded", 160, 4, workload.peak_rps / 160)
hourly = replicas_by_hour(plan, workload)
load = [workload.rate_at_hour(h) / (n * plan.target_rps_per_replica) for h, n in enumerate(hourly)]
day = daily_cost(plan, workload, catalogue)
print(f"{sum(hourly)} replica-hours instead of {24 * plan.replicas} unscaled; "
      f"${day['cost']:,.0f} per day for {day['requests'] / 1e6:,.0f}M requests")
per_1k = day["cost_per_1k_tokens"]
print(f"${per_1k * 1000:.3f} per 1M output tokens (${per_1k:.6f} per 1K), "
      f"{day['requests_per_dollar']:,.0f} requests per dollar")
display(SVG(day_svg(load=load, replicas=hourly, title="An autoscaled day (example plan)")))
"""

SIMULATE_MD = """\
## 8. Simulate a plan

`evaluate_plan` runs exactly what the grader runs: traffic at the peak (a short warm-up,
then the steady phase where the SLOs are measured), the burst, a recovery; p99 TTFT and TPOT
over their targets (`slo_ratio`, <= 1 meets them), p99 TTFT through the burst over its
target (`burst_ratio`), and the cost of the day. The grader simulates a few seconds per
phase at CPU scale; so does this cell (about a second on a laptop).
"""

SIMULATE_CODE = """\
protocol = Protocol(warmup_s=0.5, steady_s=1.0, recovery_s=0.5, drain_s=2.0)
traffic = draw_traffic(workload, protocol, np.random.default_rng(0))
result = evaluate_plan(plan, workload=workload, catalogue=catalogue, protocol=protocol,
                       traffic=traffic)
print(f"{len(traffic):,} requests; slo_ratio {result['slo_ratio']:.2f}, "
      f"burst_ratio {result['burst_ratio']:.2f}, ${result['cost_per_day']:,.0f} per day")
print("steady:", {k: result["steady"][k] for k in ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s",
                                                  "tpot_p99_s", "e2el_p50_s")})
print("utilisation:", result["utilisation"])
"""

TASK_MD = """\
## Your task: `plan_fleet(workload, catalogue) -> plan`

Fill in the cell below (it is tagged `solution`; keep the tag and the name `plan_fleet`).

- `workload` is a dict like `EXAMPLE_WORKLOAD` plus `"model"` (one of `MODELS`) and
  `"daily_curve"` (24 fractions of the peak): traffic from 10,000 requests/s up, prompt and
  output length distributions, the SLO (`ttft_p99_s`, `tpot_p99_s`), the burst
  (`multiplier`, `duration_s`, `ttft_p99_s`), the `precisions` the workload accepts and the
  `routing` policies allowed.
- `catalogue` is `CATALOGUE`: GPUs, assumptions, bytes per precision.
- Return a plain dict (numbers, strings, lists, dicts):

```python
{"gpu": "H100-SXM-80GB", "gpus_per_replica": 1, "precision": "fp8", "max_batch": 512,
 "routing": "least_loaded", "replicas": 160,
 "autoscaling": {"min_replicas": 4, "target_rps_per_replica": 62.5}}
```

**How it is graded** (on the server, on scenarios you have not seen; nothing this notebook
prints counts): `valid` - every plan parses (`parse_plan` above, with the grader's own
catalogue: a plan names a GPU, and its figures and price are the grader's); `slo` - at peak,
p99 TTFT and TPOT within their targets; `burst` - p99 TTFT through the burst within its
target; `cost` - your cost per day within 25% of the grader's own best plan (it searches the
catalogue with the roofline, then the replica count by simulation).

The cell must stand alone: the grader loads **only** the cells tagged `solution`, in a fresh
process, so import what you use there and do not rely on anything defined in other cells (the
simulator above included: copy what you need). It runs once per scenario, with a time limit
of 60 s per call.
"""

STARTER_PLAN = """\
import math


def plan_fleet(workload, catalogue):
    \"\"\"The fleet for `workload`: a dict with gpu, gpus_per_replica, precision, max_batch,
    routing, replicas and autoscaling (min_replicas, target_rps_per_replica).\"\"\"
    raise NotImplementedError(
        "Implement plan_fleet: for each GPU and precision, estimate the step time and the "
        "requests/s one replica serves within the TPOT target (Little's law), size the "
        "replicas for the peak and the burst, and return the cheapest plan"
    )
"""

REFERENCE_PLAN = """\
import math


def replica_figures(workload, catalogue, gpu_name, precision, gpus):
    \"\"\"Roofline figures of one replica, or None if the model does not fit.\"\"\"
    gpu = catalogue["gpus"][gpu_name]
    a = {name: entry["value"] for name, entry in catalogue["assumptions"].items()}
    m = workload["model"]
    size = catalogue["precision_bytes"][precision]
    parallel = 1.0 if gpus == 1 else a["tensor_parallel_efficiency"]
    weights = m["params"] * size
    kv_per_token = 2 * m["layers"] * m["kv_heads"] * m["head_dim"] * size
    free = gpu["memory_bytes"] * gpus * a["memory_utilisation"] - weights
    longest = workload["prompt_tokens"]["max"] + workload["output_tokens"]["max"]
    if free < kv_per_token * longest:
        return None
    return {
        "bandwidth": gpu["bandwidth_bytes_per_s"] * gpus * a["memory_efficiency"] * parallel,
        "flops": gpu["flops_per_s"][precision] * gpus * a["compute_efficiency"] * parallel,
        "weights": weights,
        "kv_per_token": kv_per_token,
        "kv_tokens": free / kv_per_token,
        "overhead": a["step_overhead_s"],
        "max_prefill": a["max_prefill_tokens"],
        "price": gpu["price_per_hour"] * gpus,
    }


def step_time(f, workload, batch, prefill):
    \"\"\"One engine step: `batch` sequences decode while `prefill` prompt tokens prefill.\"\"\"
    p, o = workload["prompt_tokens"]["mean"], workload["output_tokens"]["mean"]
    read = f["weights"] + f["kv_per_token"] * batch * (p + o / 2)
    work = 2 * workload["model"]["params"] * (batch + prefill)
    return f["overhead"] + max(read / f["bandwidth"], work / f["flops"])


def plan_fleet(workload, catalogue):
    peak = workload["peak_rps"]
    p, o = workload["prompt_tokens"]["mean"], workload["output_tokens"]["mean"]
    burst = workload["burst"]
    limit = 0.85 * workload["slo"]["tpot_p99_s"]  # the slowest common step, with a margin
    best = None
    for name, gpu in catalogue["gpus"].items():
        for precision in workload["precisions"]:
            if precision not in gpu["flops_per_s"]:
                continue
            for gpus in (1, 2, 4, 8):
                if gpus > gpu["max_gpus_per_replica"]:
                    break
                f = replica_figures(workload, catalogue, name, precision, gpus)
                if f is None:
                    continue
                # The batch is bounded by KV memory, and by the prefill budget: every step
                # must prefill batch x p / o prompt tokens to keep the batch full.
                most = min(1024, f["kv_tokens"] / (p + o), f["max_prefill"] * o / p)

                def slowest(batch, f=f):  # a step that also carries a full prefill budget
                    return step_time(f, workload, batch, max(batch * p / o, f["max_prefill"]))

                if most < 1 or slowest(1) > limit:
                    continue
                low, high = 1.0, most  # the largest batch whose slowest step meets the limit
                for _ in range(40):
                    middle = (low + high) / 2
                    low, high = (middle, high) if slowest(middle) <= limit else (low, middle)
                # Little's law: a request stays o steps in the batch.
                steady = low / (o * step_time(f, workload, low, low * p / o))
                full = most / (o * step_time(f, workload, most, most * p / o))
                # The burst's backlog, (multiplier x peak - capacity) x duration, must drain
                # within its TTFT target: capacity >= multiplier x peak / (1 + target / d).
                need = burst["multiplier"] * peak / (1 + burst["ttft_p99_s"] / burst["duration_s"])
                replicas = math.ceil(max(1.1 * peak / steady, 1.04 * need / full))
                target = peak / replicas
                hourly = [
                    min(replicas, max(1, math.ceil(peak * share / target)))
                    for share in workload["daily_curve"]
                ]
                cost = sum(hourly) * f["price"]
                if best is None or cost < best[0]:
                    best = (
                        cost,
                        {
                            "gpu": name,
                            "gpus_per_replica": gpus,
                            "precision": precision,
                            "max_batch": math.floor(most),
                            "routing": "least_loaded",
                            "replicas": replicas,
                            "autoscaling": {"min_replicas": 1, "target_rps_per_replica": target},
                        },
                    )
    if best is None:
        raise ValueError(f"no GPU in the catalogue meets the TPOT target of {workload['name']}")
    return best[1]
"""

CHECK_MD = """\
## Check your plan (this cell teaches; it does not grade)

It asks your `plan_fleet` for the example workload, validates the plan as the grader does,
and simulates it for a few seconds of traffic. The grader draws its own scenarios (more
traffic, other lengths and targets) and compares your cost with its best plan's.
"""

CHECK_CODE = """\
answer = plan_fleet(json.loads(json.dumps(workload.to_plain())), json.loads(json.dumps(CATALOGUE)))
print("your plan:", answer)
try:
    mine = parse_plan(answer, workload=workload, catalogue=catalogue)
except PlanError as problem:
    print("the grader would refuse this plan:", problem)
else:
    checked = evaluate_plan(mine, workload=workload, catalogue=catalogue, protocol=protocol,
                            traffic=traffic)
    print(f"slo_ratio {checked['slo_ratio']:.2f} (<= 1 meets the SLO), "
          f"burst_ratio {checked['burst_ratio']:.2f} (<= 1 survives the burst), "
          f"${checked['cost_per_day']:,.0f} per day")
"""

DEFENCE_MD = """\
## Your defence (graded by your instructor)

Replace this text with your defence of the plan, in a few paragraphs with numbers. Your
instructor scores it on four items:

- **Capacity arithmetic** (4 points): weight and KV bytes per step, the step time at the
  peak's batch (and of a step that carries a prefill), requests/s per replica by Little's law,
  replicas for the peak;
- **Hardware and precision** (3): at least two GPUs or precisions compared on cost per request
  served at your latency target, not price per hour; which catalogue figures are datasheet
  and which measured;
- **Headroom, bursts and autoscaling** (3): the headroom for the burst (its backlog and drain
  time, or room for the batch to grow) and your autoscaling policy over the day, with the
  utilisation it implies;
- **Risks** (2): what the model leaves out (efficiencies, prices, no preemption, average
  context, no chunked prefill) and how you would check the plan on real hardware (a load test
  at peak and burst with vLLM's benchmark, Nsight Systems profiles of a step).

This cell is tagged `defence`; keep the tag.
"""

DASHBOARD_MD = """\
## Exercise 2: the inference cost dashboard

The roadmap's practice project: track cost per 1K tokens, GPU utilisation, idle time and
requests per dollar across a fleet, with an alert when efficiency drops. Write
`cost_report(log, price_per_gpu_hour, min_requests_per_dollar) -> dict` (in the cell below,
tagged `solution`) from a log shaped like this project's own telemetry: GPU samples as the
worker's NVML sampler reads them (`runner/measure/telemetry.py`) and a request log.

`log` has `start_s`, `end_s` (the window billed, [start, end)), `interval_s` (each sample
stands for that many seconds of one GPU), `idle_below_pct`, `window_s`, `gpu_samples`
(`t_s`, `index`, `gpu_utilization_pct` - `None` when NVML could not read it - and more) and
`requests` (`arrival_s`, `first_token_s`, `finish_s` - `None` if unfinished -,
`prompt_tokens`, `output_tokens`, `status`: `"ok"` or `"error"`). Return:

- `gpu_hours`: distinct GPUs (`index`) x (end - start) / 3600: every GPU is billed for the
  whole window; `cost`: gpu_hours x price;
- `requests`, `output_tokens`: the requests with status `"ok"` that finished in
  [start, end), and their output tokens;
- `cost_per_1k_tokens`: cost / (output_tokens / 1000), `None` without tokens;
  `requests_per_dollar`: requests / cost;
- `idle_gpu_hours`, `idle_fraction`: the samples with a reading under `idle_below_pct`,
  x interval_s / 3600, and over the samples with a reading;
- `alert_windows`: the start of every whole window of `window_s` from start whose requests
  per dollar (the requests it served / (GPUs x window_s / 3600 x price)) is under the
  threshold; `alert`: whether there is any.

The grader runs it on fresh logs from the seed and compares every field with its own
computation (numbers within 1e-6 relative).
"""

STARTER_REPORT = """\
def cost_report(log, price_per_gpu_hour, min_requests_per_dollar):
    \"\"\"Cost, throughput, idle time and alerts of a fleet over the log's window.\"\"\"
    raise NotImplementedError("Implement cost_report: see the table above")
"""

REFERENCE_REPORT = """\
def cost_report(log, price_per_gpu_hour, min_requests_per_dollar):
    \"\"\"Cost, throughput, idle time and alerts of a fleet over the log's window.\"\"\"
    start, end = log["start_s"], log["end_s"]
    gpus = len({sample["index"] for sample in log["gpu_samples"]})
    gpu_hours = gpus * (end - start) / 3600
    cost = gpu_hours * price_per_gpu_hour
    served = [
        r for r in log["requests"]
        if r["status"] == "ok" and r["finish_s"] is not None and start <= r["finish_s"] < end
    ]
    tokens = sum(r["output_tokens"] for r in served)
    readings = [s["gpu_utilization_pct"] for s in log["gpu_samples"]
                if s["gpu_utilization_pct"] is not None]
    idle = sum(1 for u in readings if u < log["idle_below_pct"])
    window = log["window_s"]
    counts = [0] * int((end - start) // window)
    for r in served:
        k = int((r["finish_s"] - start) // window)
        if k < len(counts):
            counts[k] += 1
    window_cost = gpus * window / 3600 * price_per_gpu_hour
    alerts = [start + k * window for k, n in enumerate(counts)
              if n / window_cost < min_requests_per_dollar]
    return {
        "gpu_hours": gpu_hours,
        "cost": cost,
        "requests": len(served),
        "output_tokens": tokens,
        "cost_per_1k_tokens": cost / (tokens / 1000) if tokens else None,
        "requests_per_dollar": len(served) / cost if cost else None,
        "idle_gpu_hours": idle * log["interval_s"] / 3600,
        "idle_fraction": idle / len(readings) if readings else 0.0,
        "alert_windows": alerts,
        "alert": bool(alerts),
    }
"""

DASHBOARD_CHECK_MD = """\
### Check your report (this cell teaches; it does not grade)

On an example log (2 GPUs, 4 minutes), against the answer the grader's computation gives.
"""

DASHBOARD_CHECK_CODE = """\
mine = cost_report(EXAMPLE_LOG, EXAMPLE_LOG_PRICE, EXAMPLE_LOG_THRESHOLD)
for key, want in EXAMPLE_LOG_REPORT.items():
    have = mine.get(key) if isinstance(mine, dict) else None
    same = have == want or (
        isinstance(want, float) and isinstance(have, (int, float))
        and abs(have - want) <= 1e-6 * abs(want)
    )
    print(f"{key:20s} {'ok  ' if same else 'DIFF'} expected {want!r}, got {have!r}")
"""

SUBMIT_MD = """\
## Submit

Save the notebook and upload it on the lab page (or with the CLI). The grader runs every
cell, then loads **only the cells tagged `solution`** into a separate sandboxed process and
calls `plan_fleet` on each scenario drawn from its secret seed (two at CPU scale, 10-13K and
15-19K requests/s; GPU workers add a 70B scenario and one more catalogue entry, `this-node`,
measured on the worker's own GPU) and `cost_report` on three fresh fleet logs. Criteria:
`valid`, `slo`, `burst`, `cost` (within 25% of the grader's best plan) and `dashboard`. The
report shows each scenario, your plan's simulated percentiles, the grader's best plan, and
a cost vs latency plot of the plans it tried with yours. Your defence goes to your
instructor.
"""


def inlined_source() -> str:
    """runner/cost's modules as one cell: every import hoisted to the top (the `from
    runner.cost...` ones dropped: those names are all defined in the cell), each module's
    docstring kept as a comment, formatted by ruff like the rest of the notebook."""
    imports: list[str] = []
    bodies: list[str] = []
    defined: dict[str, str] = {}
    for module in INLINED:
        text = (REPO / "runner" / "cost" / f"{module}.py").read_text(encoding="utf-8")
        tree = ast.parse(text)
        lines = text.split("\n")
        drop: set[int] = set()
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                drop.update(range(node.lineno - 1, node.end_lineno))
                module_name = getattr(node, "module", None) or ""
                if module_name != "__future__" and not module_name.startswith("runner."):
                    imports.append(ast.get_source_segment(text, node))
            names = []
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            for name in names:
                if name in defined and defined[name] != module:
                    raise SystemExit(f"{name} is defined in both {defined[name]} and {module}")
                defined[name] = module
        docstring = tree.body[0]
        header = [f"# ---- runner/cost/{module}.py"]
        if isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant):
            drop.update(range(docstring.lineno - 1, docstring.end_lineno))
            header += [f"# {line}".rstrip() for line in docstring.value.value.strip().split("\n")]
        kept = [line for number, line in enumerate(lines) if number not in drop]
        bodies.append("\n".join(header) + "\n\n" + "\n".join(kept).strip() + "\n")
    unique = list(dict.fromkeys(imports))
    source = "\n".join(
        [
            "# A copy of runner/cost/ of the Inference Roadmap project (see the cell above). Its",
            "# annotations name classes defined further down: the first cell's",
            "# `from __future__ import annotations` makes that work in a notebook.",
            "",
            *unique,
            "",
            "",
            "\n\n".join(bodies),
        ]
    )
    return ruff(source, "check", "--fix", "--select", "I,F401", "--quiet")


def ruff(source: str, *command: str) -> str:
    """`source` after `ruff <command>` (format, or check --fix), as the repository's ruff
    settings have it: generated cells must pass `make test`'s lint like written code."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--stdin-filename", "cell.py", "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if done.returncode not in (0, 1) or not done.stdout:
        raise SystemExit(f"ruff {' '.join(command)} failed: {done.stderr}")
    return done.stdout


def formatted(source: str) -> str:
    return ruff(source, "format", "--quiet").rstrip("\n")


def _json_literal(name: str, data: object) -> str:
    """`NAME = json.loads(...)` with the JSON cut into short string pieces (lines under 100)."""
    text = json.dumps(data, separators=(",", ":"))
    pieces = [text[i : i + 72] for i in range(0, len(text), 72)]
    body = "\n".join(f"    {json.dumps(piece)}" for piece in pieces)
    return f"{name} = json.loads(\n{body}\n)"


def data_cell() -> str:
    catalogue = load_catalogue().to_plain()
    models = {name: model.to_plain() for name, model in load_models().items()}
    curve = [
        float(0.3 + 0.7 * (0.5 - 0.5 * np.cos(2 * np.pi * (h - 3) / 24)) ** 1.5) for h in range(24)
    ]
    curve = [round(v / max(curve), 4) for v in curve]
    log = synthetic_log(np.random.default_rng(2026), gpus=2, windows=4, rate_per_gpu=1.0)
    threshold = alert_threshold(log, EXAMPLE_LOG_PRICE)
    report = cost_report(log, EXAMPLE_LOG_PRICE, threshold)
    source = "\n".join(
        [
            CATALOGUE_CODE_HEAD.rstrip("\n"),
            "import json",
            "",
            _json_literal("CATALOGUE", catalogue),
            _json_literal("MODELS", models),
            f"EXAMPLE_WORKLOAD = {EXAMPLE_WORKLOAD!r}",
            f"EXAMPLE_CURVE = {curve!r}",
            "# Exercise 2's example: a small fleet log and the report the grader computes.",
            _json_literal("EXAMPLE_LOG", log),
            f"EXAMPLE_LOG_PRICE = {EXAMPLE_LOG_PRICE!r}",
            f"EXAMPLE_LOG_THRESHOLD = {threshold!r}",
            f"EXAMPLE_LOG_REPORT = {report!r}",
            CATALOGUE_CODE_TAIL,
        ]
    )
    return formatted(source)


def build(plan: str, report: str, *, defence: str = DEFENCE_MD, extra: list | None = None):
    """The notebook with `plan` and `report` as its solution cells."""
    cells = [
        new_markdown_cell(INTRO, id="intro"),
        new_markdown_cell(SETUP_MD, id="setup-md"),
        new_code_cell(SETUP_CODE, id="setup", metadata=dict(LOCKED)),
        new_markdown_cell(CATALOGUE_MD, id="catalogue-md"),
        new_code_cell(data_cell(), id="catalogue", metadata=dict(LOCKED)),
        new_markdown_cell(SIMULATOR_MD, id="simulator-md"),
        new_code_cell(formatted(inlined_source()), id="simulator", metadata=dict(LOCKED)),
        new_markdown_cell(MEMORY_MD, id="memory-md"),
        new_code_cell(MEMORY_CODE, id="memory", metadata=dict(LOCKED)),
        new_markdown_cell(DECODE_MD, id="decode-md"),
        new_code_cell(DECODE_CODE, id="decode", metadata=dict(LOCKED)),
        new_markdown_cell(PREFILL_MD, id="prefill-md"),
        new_code_cell(PREFILL_CODE, id="prefill", metadata=dict(LOCKED)),
        new_markdown_cell(RIDGE_MD, id="ridge-md"),
        new_code_cell(RIDGE_CODE, id="ridge", metadata=dict(LOCKED)),
        new_markdown_cell(CAPACITY_MD, id="capacity-md"),
        new_code_cell(CAPACITY_CODE, id="capacity", metadata=dict(LOCKED)),
        new_markdown_cell(COST_MD, id="cost-md"),
        new_code_cell(COST_CODE, id="cost", metadata=dict(LOCKED)),
        new_markdown_cell(DAY_MD, id="day-md"),
        new_code_cell(DAY_CODE, id="day", metadata=dict(LOCKED)),
        new_markdown_cell(SIMULATE_MD, id="simulate-md"),
        new_code_cell(SIMULATE_CODE, id="simulate", metadata=dict(LOCKED)),
        new_markdown_cell(TASK_MD, id="task-md"),
        new_code_cell(plan, id="plan", metadata={"tags": ["solution"]}),
        new_markdown_cell(CHECK_MD, id="check-md"),
        new_code_cell(CHECK_CODE, id="plan-check", metadata=dict(LOCKED)),
        new_markdown_cell(defence, id="defence", metadata={"tags": ["defence"]}),
        new_markdown_cell(DASHBOARD_MD, id="dashboard-md"),
        new_code_cell(report, id="report", metadata={"tags": ["solution"]}),
        new_markdown_cell(DASHBOARD_CHECK_MD, id="report-check-md"),
        new_code_cell(DASHBOARD_CHECK_CODE, id="report-check", metadata=dict(LOCKED)),
        new_markdown_cell(SUBMIT_MD, id="submit-md"),
        *(extra or []),
    ]
    for cell in cells:
        if cell.cell_type == "code" and cell.id not in ("catalogue", "simulator"):
            cell.source = formatted(cell.source)  # the learner's cells too: as ruff keeps them
        # As Jupyter and `ruff format` store them: no trailing newline.
        cell.source = cell.source.rstrip("\n")
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


REFERENCE_DEFENCE = """\
## Your defence (graded by your instructor)

*The reference's defence, for the instructor: what a good answer covers.* For each GPU,
precision and replica size I compute the replica's roofline: weights (params x bytes) and KV
bytes per token (2 x layers x kv_heads x head_dim x bytes) set the memory left for the
batch; a step takes the longer of its bytes over 80% of the bandwidth and its FLOPs over 50%
of the FLOP/s, plus 2 ms. I size the batch so that the slowest common step, one that
prefills a full 2048-token budget beside the decodes, stays under 85% of the p99 TPOT target,
and get requests/s per replica from Little's law (batch / (output tokens x step)). Replicas
cover the peak with 10% to spare, and the burst: (multiplier x peak - capacity) x duration
must drain within the burst's TTFT target. The cheapest plan per day wins, autoscaled to the
peak's load per replica. fp8 (where allowed) halves bytes, which is what decode is bound by;
GPUs with few FLOP/s lose on p99 TPOT, because prefill steps are slow on them. Risks: the
efficiencies and prices are assumptions; the model has no preemption and uses average
contexts; I would check the plan with a load test (vLLM's benchmark_serving at the peak rate
and burst) and Nsight Systems traces of a step.
"""


REPLICAS = "                replicas = math.ceil(max(1.1 * peak / steady, 1.04 * need / full))\n"


def _scaled(factor: float) -> str:
    """The reference, with its replica count multiplied by `factor`."""
    return REFERENCE_PLAN.replace(
        "                replicas = math.ceil(max(1.1 * peak / steady, 1.04 * need / full))\n",
        f"                replicas = math.ceil({factor} * max(1.1 * peak / steady, need / full))\n",
    )


# Known-wrong: half the reference's fleet. It falls behind at peak: fails `slo`.
TOO_FEW = _scaled(0.5)

# Known-wrong: 60% more than the reference's fleet. Meets every target, at a cost: `cost`.
TOO_MANY = _scaled(1.6)

# Known-wrong: sized for the steady peak only (10% spare), with no room to grow: max_batch at
# the peak's batch. Meets the SLO at peak, drowns in the burst.
NO_HEADROOM = REFERENCE_PLAN.replace(
    REPLICAS,
    "                replicas = math.ceil(1.1 * peak / steady)  # no headroom for bursts\n",
).replace(
    '                            "max_batch": math.floor(most),\n',
    '                            "max_batch": math.ceil(low),  # no room to grow\n',
)

# Cheat: edit the catalogue it was given (a cheap, fast H100) and send its own figures back,
# or name a GPU that is not in the catalogue.
CHEAT_CATALOGUE = """\
def plan_fleet(workload, catalogue):
    h100 = catalogue["gpus"]["H100-SXM-80GB"]
    h100["price_per_hour"] = 0.01
    h100["bandwidth_bytes_per_s"] *= 10
    plan = {"gpu": "H100-SXM-80GB", "gpus_per_replica": 1, "precision": "bf16",
            "max_batch": 256, "routing": "least_loaded", "replicas": 8,
            "autoscaling": {"min_replicas": 1, "target_rps_per_replica": 1.0},
            "price_per_hour": 0.01, "gpu_spec": h100}
    if workload["peak_rps"] > 15000:
        plan = {**plan, "gpu": "B200-free"}
        del plan["price_per_hour"], plan["gpu_spec"]
    return plan
"""

DASHBOARD_WRONG = """\
def cost_report(log, price_per_gpu_hour, min_requests_per_dollar):
    # Wrong: counts every request (failed and unfinished ones too), prompt + output tokens,
    # and unreadable samples as idle.
    start, end = log["start_s"], log["end_s"]
    gpus = len({s["index"] for s in log["gpu_samples"]})
    gpu_hours = gpus * (end - start) / 3600
    cost = gpu_hours * price_per_gpu_hour
    requests = log["requests"]
    tokens = sum(r["prompt_tokens"] + r["output_tokens"] for r in requests)
    idle = sum(1 for s in log["gpu_samples"]
               if s["gpu_utilization_pct"] is None or s["gpu_utilization_pct"] < 5)
    return {
        "gpu_hours": gpu_hours, "cost": cost, "requests": len(requests),
        "output_tokens": tokens, "cost_per_1k_tokens": cost / (tokens / 1000),
        "requests_per_dollar": len(requests) / cost,
        "idle_gpu_hours": idle * log["interval_s"] / 3600,
        "idle_fraction": idle / len(log["gpu_samples"]),
        "alert_windows": [], "alert": False,
    }
"""


def hardcoded_plan() -> str:
    """Cheat: the reference's answer for the notebook's example workload, returned for every
    workload."""
    namespace: dict = {}
    exec(REFERENCE_PLAN, namespace)  # noqa: S102 - our own reference, at build time
    workload = {**EXAMPLE_WORKLOAD, "model": load_models()["llama-3.1-8b"].to_plain()}
    workload["daily_curve"] = [1.0] * 24
    plan = namespace["plan_fleet"](workload, load_catalogue().to_plain())
    return (
        "# Tuned once on the example workload, returned for every workload.\n"
        f"PLAN = {plan!r}\n\n\n"
        "def plan_fleet(workload, catalogue):\n"
        "    return PLAN\n"
    )


def fixtures() -> dict[str, object]:
    for variant in (TOO_FEW, TOO_MANY, NO_HEADROOM):
        assert variant != REFERENCE_PLAN
    return {
        "too_few.ipynb": build(TOO_FEW, REFERENCE_REPORT),
        "too_many.ipynb": build(TOO_MANY, REFERENCE_REPORT),
        "no_headroom.ipynb": build(NO_HEADROOM, REFERENCE_REPORT),
        "cheat_catalogue.ipynb": build(CHEAT_CATALOGUE, REFERENCE_REPORT),
        "hardcoded.ipynb": build(hardcoded_plan(), REFERENCE_REPORT),
        "dashboard_wrong.ipynb": build(REFERENCE_PLAN, DASHBOARD_WRONG),
    }


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    nbformat.write(build(STARTER_PLAN, STARTER_REPORT), HERE / "cost.ipynb")
    nbformat.write(
        build(REFERENCE_PLAN, REFERENCE_REPORT, defence=REFERENCE_DEFENCE), HERE / "reference.ipynb"
    )
    for name, nb in fixtures().items():
        nbformat.write(nb, FIXTURES / name)
    print(f"wrote {HERE / 'cost.ipynb'}, reference.ipynb and {len(fixtures())} fixtures")


if __name__ == "__main__":
    main()
