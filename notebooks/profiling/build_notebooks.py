"""Write the profiling lab's notebooks: the starter, the reference solution and the fixtures.

Run from the repository root after changing any notebook text here:

    .venv/bin/python notebooks/profiling/build_notebooks.py

The generated .ipynb files are committed; tests read them as real uploads would arrive.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"

LOCKED = {"deletable": False, "editable": False, "tags": ["protected"]}

INTRO = """\
# Profiling: find the slow layer and explain the memory

**Milestone:** *Foundations* - "You can profile a PyTorch model, identify the slowest layers,
and explain GPU memory usage breakdown".

You will be handed a model you have never seen - a stack of transformer blocks in which one
layer is much slower than it should be - and you will find out, by measuring, **which** layer
it is, **how much** of the time it takes, **why** it is slow, and **where the memory goes**.
That is the first thing an inference engineer does with any model: nobody optimises what they
have not measured.

**What you will do**
1. Run `torch.profiler` on a forward pass and read its table and its trace.
2. Time every layer on its own, correctly (warm-up, medians, and on a GPU, synchronisation).
3. Look inside the slow layer's profile to tell an unfused operation, a bad matmul shape and a
   host synchronisation apart.
4. Break the memory down: parameters, KV cache, activations, and on a GPU the allocator's
   reserve and library workspaces.
5. Write `profile_model(model, inputs, *, k, trace_path)`, which does all of it for any model;
   the grader runs it on a model whose bottleneck it chose from a secret seed.

**Read** (the first two are on the roadmap's list for this phase):
- PyTorch, [torch.profiler](https://pytorch.org/docs/stable/profiler.html): `profile`,
  `record_function`, `key_averages`, `export_chrome_trace`, `profile_memory`, schedules.
- NVIDIA, [CUDA C++ Programming Guide](https://docs.nvidia.com/cuda/cuda-c-programming-guide/),
  section *Asynchronous Concurrent Execution*: kernel launches return before the kernel runs,
  and what makes the host wait for the device. It is why GPU timing needs synchronisation.
- PyTorch, [Understanding CUDA Memory Usage](https://pytorch.org/docs/stable/torch_cuda_memory.html)
  and the [CUDA memory management notes](https://pytorch.org/docs/stable/notes/cuda.html#cuda-memory-management):
  the caching allocator, `memory_allocated` vs `memory_reserved`, memory snapshots (the
  `torch.cuda` documentation behind the milestone's "GPU memory usage breakdown").
- Not on the roadmap's list either, but the canonical next step: the
  [PyTorch Profiler recipe](https://pytorch.org/tutorials/recipes/recipes/profiler_recipe.html)
  and [Perfetto](https://ui.perfetto.dev), which opens the traces you export here.
"""

SETUP_MD = """\
## Setup: a model to practise on

The grader's model is built inside the grading sandbox; here is one like it, small enough for a
laptop CPU. A Llama-like stack: token embedding, `layers` blocks of (RMSNorm, causal
self-attention, RMSNorm, GELU MLP) with residual connections, a final RMSNorm and an LM head
whose weight is **tied** to the embedding (one tensor, two modules). Each attention layer owns a
**preallocated KV cache**: two buffers of shape `(batch, cache_len, heads, head_dim)` that a
forward fills for its tokens, as a serving engine does during prefill.

`practice_model(slow=...)` plants a bottleneck for you to find: `"shape"` computes one linear
layer one token at a time, `"unfused"` computes one attention layer one (sequence, head, block
of queries) at a time with the softmax written out op by op. Module names are the ones
`model.named_modules()` gives: `embed`, `blocks.0.norm1`, `blocks.0.attn.qkv`,
`blocks.0.attn.core`, `blocks.0.attn.out`, `blocks.0.norm2`, `blocks.0.mlp.up`,
`blocks.0.mlp.act`, `blocks.0.mlp.down`, ..., `norm`, `lm_head`.
"""

SETUP_CODE = """\
import json
import math
import os
import statistics
import tempfile
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# One CPU thread: small operators time far more steadily, and the grader's CPU workers run
# your function with one thread too.
torch.set_num_threads(1)
ACTIVITIES = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])


class RMSNorm(nn.Module):
    def __init__(self, width, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RowByRowLinear(nn.Linear):
    # A bad shape: a [1, d] x [d, n] product per token instead of one [tokens, d] x [d, n].
    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1]).split(1)
        return torch.cat([F.linear(row, self.weight, self.bias) for row in rows]).reshape(
            *x.shape[:-1], -1
        )


class AttentionCore(nn.Module):
    def __init__(self, batch, cache_len, heads, head_dim, unfused=False):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(batch, cache_len, heads, head_dim))
        self.register_buffer("v_cache", torch.zeros(batch, cache_len, heads, head_dim))
        self.unfused = unfused

    def forward(self, q, k, v):  # (batch, seq, heads, head_dim) each
        b, s = q.shape[:2]
        self.k_cache[:b, :s].copy_(k)
        self.v_cache[:b, :s].copy_(v)
        q = q.transpose(1, 2)
        k = self.k_cache[:b, :s].transpose(1, 2)
        v = self.v_cache[:b, :s].transpose(1, 2)
        if not self.unfused:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        out = torch.empty_like(q)
        for i in range(b):  # unfused: every step below is its own kernel
            for h in range(q.shape[1]):
                for r in range(0, s, 16):
                    scores = q[i, h, r : r + 16] @ k[i, h].T / math.sqrt(q.shape[-1])
                    scores = scores.masked_fill(mask[r : r + 16], float("-inf"))
                    weights = (scores - scores.amax(-1, keepdim=True)).exp()
                    out[i, h, r : r + 16] = weights / weights.sum(-1, keepdim=True) @ v[i, h]
        return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, d, heads, batch, cache_len, unfused=False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.core = AttentionCore(batch, cache_len, heads, d // heads, unfused)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = (t.reshape(b, s, self.heads, -1) for t in self.qkv(x).split(d, dim=-1))
        return self.out(self.core(q, k, v).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, d, heads, batch, cache_len, unfused=False):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.attn = Attention(d, heads, batch, cache_len, unfused)
        self.mlp = nn.Sequential()  # named children: up, act, down
        self.mlp.add_module("up", nn.Linear(d, 4 * d))
        self.mlp.add_module("act", nn.GELU(approximate="tanh"))
        self.mlp.add_module("down", nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PracticeModel(nn.Module):
    def __init__(self, slow=None, layers=2, d=128, heads=4, vocab=512, batch=2, cache_len=96):
        super().__init__()
        kind, _, where = (slow or "").partition(":")
        self.embed = nn.Embedding(vocab, d)
        unfused = [kind == "unfused" and where == f"blocks.{i}.attn.core" for i in range(layers)]
        self.blocks = nn.ModuleList(Block(d, heads, batch, cache_len, u) for u in unfused)
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.embed.weight  # tied: one tensor, two modules
        if kind == "shape":
            parent, _, name = where.rpartition(".")
            old = self.get_submodule(where)
            new = RowByRowLinear(old.in_features, old.out_features, bias=old.bias is not None)
            setattr(self.get_submodule(parent), name, new)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def practice_model(slow=None, seed=0):
    # slow: None, "shape:<a linear layer's name>" or "unfused:blocks.<i>.attn.core"
    torch.manual_seed(seed)
    return PracticeModel(slow).to(DEVICE).eval().requires_grad_(False)


def practice_inputs(batch=2, seq=64, vocab=512, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=generator).to(DEVICE)


def sync():
    # CUDA kernels run asynchronously: wait for them before reading a clock.
    if DEVICE == "cuda":
        torch.cuda.synchronize()


print("device:", DEVICE, "| torch", torch.__version__, "| threads", torch.get_num_threads())
print([name for name, m in practice_model().named_modules() if name][:12], "...")
"""

PROFILER_MD = """\
## 1. A first profile

`torch.profiler.profile` records every operator PyTorch runs (`aten::linear`, `aten::mul`,
...) with its start and end, on the CPU and, with `ProfilerActivity.CUDA`, every kernel on the
GPU. `record_function("name")` adds a range of your own, which the table and the trace show
around the operators it contains.

Two rules before you believe any number:

- **Warm up.** The first forward pays one-off costs: memory allocated from the system,
  kernels picked or compiled, caches cold. Profile the second one, not the first.
- **Read the right column.** *Self CPU* is time in the operator itself; *CPU total* includes
  the operators it called (`aten::linear` calls `aten::addmm`). *# of Calls* is often the most
  telling column of all.

Run it. The practice model has a planted bottleneck; see if the table already hints at it.
"""

PROFILER_CODE = """\
model = practice_model(slow="shape:blocks.1.mlp.up")
ids = practice_inputs()

with torch.no_grad():
    model(ids)  # warm-up
    with profile(activities=ACTIVITIES) as prof, record_function("forward"):
        model(ids)
        sync()

print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=10))
"""

TRACE_MD = """\
The table aggregates; the **trace** shows time. `prof.export_chrome_trace(path)` writes the
Chrome trace format (JSON, a `"traceEvents"` list) that [Perfetto](https://ui.perfetto.dev)
and `chrome://tracing` open: one row per thread (and per CUDA stream), each operator a bar,
your ranges as bars around them. On a GPU you see the CPU launching kernels ahead of the GPU
running them - until something makes it wait. Download the file the next cell writes and open
it in Perfetto: the hundreds of thin `aten::linear` bars inside one `nn.Module` are the
bottleneck.
"""

TRACE_CODE = """\
trace_path = os.path.join(tempfile.mkdtemp(), "first_trace.json")
prof.export_chrome_trace(trace_path)
with open(trace_path) as handle:
    events = json.load(handle)["traceEvents"]
print(f"{trace_path}: {os.path.getsize(trace_path) / 1e3:.0f} kB, {len(events)} events")
print("most frequent:", Counter(e.get("name") for e in events).most_common(4))
"""

MODULES_MD = """\
## 2. Time per layer

The question is not "which operator" but "which **layer**". Two things to get right:

- **Which modules.** A block's time includes its children's, so ranking every module just
  returns the whole model, then the block with the problem. Rank the **leaf modules** - those
  with no children (`not any(m.children())`) - the layers that do the work.
- **How to time one.** `register_forward_pre_hook` and `register_forward_hook` run your code
  right before and after a module's `forward`. Read a clock in each. On a GPU, call
  `torch.cuda.synchronize()` first in both: a kernel launch returns in microseconds while the
  kernel is still running (the CUDA Programming Guide's *asynchronous execution*), so without
  it you time the launch, and the next synchronising call gets charged for all the work queued
  before it. Our definition, which the grader uses: **a module's time is the wall-clock time
  of its forward with the device synchronised at its start and end; its share is that time
  divided by the whole forward's, measured the same way.**
- **How many times.** A shared machine interrupts you at random: one forward in ten lands a
  few milliseconds on a random layer. Time ten forwards and take the **median**.

Here is one module timed that way. Your solution does it for every leaf at once.
"""

MODULES_CODE = """\
leaves = [name for name, m in model.named_modules() if name and not any(m.children())]
print(len(leaves), "leaf modules, e.g.", leaves[:5])

times = []
module = model.get_submodule("blocks.0.mlp.up")


def before(m, args):
    sync()
    m.started = time.perf_counter_ns()


def after(m, args, output):
    sync()
    times.append(time.perf_counter_ns() - m.started)


handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
with torch.no_grad():
    for _ in range(10):
        model(ids)
for handle in handles:
    handle.remove()
print(f"blocks.0.mlp.up: median {statistics.median(times) / 1e3:.0f} us over {len(times)} forwards")
"""

OVERHEAD_MD = """\
**Why not take the times from the profiler?** You can: a `record_function(name)` range opened
in the pre-hook and closed in the post-hook puts every layer in the table and the trace under
its own name. But the profiler records every operator, and that costs a few microseconds per
event. A layer made of hundreds of tiny operators - exactly the kind you are hunting - looks
slower under the profiler than it is. On the CI machine the planted layer's share came out up to
0.07 higher from the profiler's table than from plain timers. Use the profiler to see **what**
runs and **why**; time the shares with cheap, synchronised clocks.
"""

CAUSE_MD = """\
## 3. Why is it slow?

Open the slow layer's range and count what is inside. Three causes look different:

- **`"unfused"`**: one logical operation (a softmax, a GELU, a norm, attention) written as
  many small element-wise kernels, each reading and writing memory. Inside the layer: many
  `aten::mul`, `aten::add`, `aten::sub`, `aten::exp`, `aten::div`, `aten::tanh`... and few
  matmuls.
- **`"shape"`**: a matmul of a bad shape - a few rows at a time (or one) instead of one large
  product - so the weight is read again for every few rows and the GEMM gets no reuse. Inside:
  many `aten::linear` / `aten::mm` / `aten::addmm`; with `record_shapes=True`, inputs of shape
  `[1, d]`.
- **`"host_sync"`**: the forward needs a value on the host (`.item()`, `.cpu()`,
  `print(tensor)`, `if tensor:`), so the CPU waits for the GPU to finish everything queued
  before it, and the GPU then idles while the CPU catches up. Inside: `aten::item` /
  `aten::_local_scalar_dense`, and on a GPU `cudaStreamSynchronize` or a device-to-host
  `cudaMemcpyAsync`; in the trace, gaps in the GPU's row.

A host sync costs next to nothing on a CPU-only machine (there is no device to wait for), so
CPU graders plant only the first two; GPU graders plant all three.

`prof.events()` gives each recorded event with its `cpu_children`: the operators called
directly inside it. The next cell wraps one layer in a range and lists what ran inside it,
with the shapes of the inputs.
"""

CAUSE_CODE = """\
suspect = "blocks.1.mlp.up"
module = model.get_submodule(suspect)
opened = []


def enter(m, args):
    opened.append(record_function(suspect).__enter__())


def leave(m, args, output):
    opened.pop().__exit__(None, None, None)


handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
with torch.no_grad(), profile(activities=ACTIVITIES, record_shapes=True) as prof:
    model(ids)
for handle in handles:
    handle.remove()

inside = [child for event in prof.events() if event.name == suspect for child in event.cpu_children]
print(f"{len(inside)} operators inside {suspect}:", Counter(c.name for c in inside).most_common(4))
first_matmul = next(c for c in inside if c.name == "aten::linear")
print("input shapes of the first aten::linear (input, weight, bias):", first_matmul.input_shapes)
"""

MEMORY_MD = """\
## 4. Where the memory goes

- **parameters**: the weights. `sum(p.numel() * p.element_size() for p in
  model.parameters())`: `parameters()` yields a **shared** tensor once, while `state_dict()`
  lists the tied LM head twice, and the buffers too.
- **KV cache**: keys and values kept for every past token, per layer, in the cache **buffers**
  (`named_buffers()`, here `k_cache` and `v_cache`): `2 x layers x batch x cache_len x heads x
  head_dim x bytes per element`, allocated up front for the whole cache length, not for the
  tokens of one forward.
- **activations**: what a forward allocates as it goes - each layer's output, temporaries, the
  logits. Count the **peak** above what was allocated before the forward: not the sum of all
  outputs (most are freed a layer later), nor the net change (just the logits that stay).
- **allocator reserve** (GPU): memory PyTorch's caching allocator took from the driver but no
  tensor uses - cached blocks, rounding, fragmentation.
  `torch.cuda.max_memory_reserved() - torch.cuda.max_memory_allocated()` over one forward
  after `torch.cuda.empty_cache()`.
- **workspace** (GPU): scratch memory libraries keep once used - cuBLAS allocates its workspace
  at the first matmul and keeps it. `torch.cuda.memory_allocated()` after the **first** forward
  (output deleted) minus before it; `torch._C._cuda_clearCublasWorkspaces()` starts again.

**On a GPU** the caching allocator keeps its own statistics: `torch.cuda.reset_peak_memory_stats()`,
then one forward, then `torch.cuda.max_memory_allocated()` minus `memory_allocated()` before it
is the activation peak. `torch.cuda.memory_snapshot()` lists every segment and block, and
`torch.cuda.memory._record_memory_history()` with `_dump_snapshot()` records a timeline you can
open at [pytorch.org/memory_viz](https://pytorch.org/memory_viz) ("Understanding CUDA Memory
Usage"). `nvidia-smi` shows more than all of this: the CUDA context itself takes a few hundred MB
outside the allocator.

**On a CPU** there is no caching allocator, but `profile(profile_memory=True)` records every
allocation and free as a `"[memory]"` event in the trace, with its `Bytes` (negative for a
free). Adding them up in time order inside your forward's range gives the running total, and
its highest point is the peak. Activations are measured on a forward **after** a warm-up, under
`torch.no_grad()` (the grader's model has no gradients anyway).
"""

MEMORY_CODE = """\
params = sum(p.numel() * p.element_size() for p in model.parameters())
listed_twice = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(f"parameters: {params:,} bytes")
print(f"state_dict() says {listed_twice:,}: the tied weight twice, and the buffers")
cache = {n: tuple(b.shape) for n, b in model.named_buffers() if n.endswith("_cache")}
print("cache buffers:", len(cache), "e.g.", next(iter(cache.items())))


def activation_peak(trace_events, range_name="forward"):
    span = next(e for e in trace_events if e.get("name") == range_name and e.get("ph") == "X")
    start, end = span["ts"], span["ts"] + span["dur"]
    changes = sorted(
        (e["ts"], e["args"]["Bytes"])
        for e in trace_events
        if e.get("name") == "[memory]" and start <= e["ts"] <= end
    )
    running = peak = 0
    for _, change in changes:
        running += change
        peak = max(peak, running)
    return peak


with torch.no_grad():
    model(ids)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        model(ids)
        sync()
        print(f"activations: {torch.cuda.max_memory_allocated() - before:,} bytes (GPU peak)")
        reserved, allocated = torch.cuda.memory_reserved(), torch.cuda.memory_allocated()
        print(f"reserved {reserved:,} vs allocated {allocated:,}")
    else:
        with (
            profile(activities=ACTIVITIES, profile_memory=True) as prof,
            record_function("forward"),
        ):
            logits = model(ids)
        path = os.path.join(tempfile.mkdtemp(), "memory_trace.json")
        prof.export_chrome_trace(path)
        with open(path) as handle:
            peak = activation_peak(json.load(handle)["traceEvents"])
        print(f"activations: {peak:,} bytes at the peak")
        print(f"the logits alone: {logits.numel() * logits.element_size():,}")
"""

TASK_MD = """\
## Your task

Fill in the cell below (it is tagged `solution`; keep the tag and the name `profile_model`):

```python
profile_model(model, inputs, *, k, trace_path) -> dict
```

- `model` is an `nn.Module` like the practice model (other sizes, one planted bottleneck, on
  the grader's device, parameters frozen); `inputs` is a `(batch, seq)` tensor of token ids on
  the same device: run it as `model(inputs)` (under `torch.no_grad()`);
- `k` is how many of the slowest leaf modules to list (3 on the grader);
- `trace_path` is where to write your Chrome trace: `prof.export_chrome_trace(trace_path)`
  of a profile of this model, at most 20 MB (two or three forwards, no `record_shapes`);
- return

```python
{
    "slowest": [  # k leaf modules, slowest first
        {"module": "blocks.2.attn.core", "share": 0.21, "cause": "unfused"},
        {"module": "blocks.0.mlp.down", "share": 0.04, "cause": None},
        ...
    ],
    "memory": {  # bytes
        "parameters": ..., "activations": ..., "kv_cache": ...,
        "allocator_reserve": ... or None, "workspace": ... or None,  # GPU only
    },
}
```

with `module` a name from `model.named_modules()`, `share` a fraction of the forward's time
(section 2's definition), and `cause` one of `"unfused"`, `"shape"`, `"host_sync"` for the
first module (the others may be `None`). Numbers may be Python numbers or 0-d tensors.

The cell must stand alone: the grader loads **only** the cells tagged `solution`, in a fresh
process, so import what you use there and do not rely on `DEVICE`, `sync`, `activation_peak`
or anything else defined in other cells. Write it for both devices: check `inputs.is_cuda`.
"""

STARTER_SOLUTION = """\
import torch
from torch.profiler import ProfilerActivity, profile, record_function


def profile_model(model, inputs, *, k, trace_path):
    \"\"\"Profile model(inputs): its k slowest leaf modules with their share of the time and the
    cause of the slowest, its memory breakdown in bytes, and a Chrome trace at trace_path.\"\"\"
    # 1. Warm up, then time every leaf module with forward pre/post hooks (synchronise on a
    #    GPU); the median share over ~10 forwards.
    # 2. Profile two forwards with torch.profiler, each leaf a record_function range; export
    #    the trace to trace_path.
    # 3. Classify the slowest module from the operators inside its range.
    # 4. Memory: parameters, kv_cache, activations (and allocator_reserve, workspace on a GPU).
    raise NotImplementedError(
        "Implement profile_model: time each leaf module, export a torch.profiler trace to "
        "trace_path, and return {'slowest': [k modules], 'memory': {...}} (see the task above)"
    )
"""

REFERENCE_SOLUTION = """\
import json
import statistics
import time  # noqa: F811 - the grader runs the solution cells alone, without the setup cell

import torch
from torch.profiler import ProfilerActivity, profile, record_function

SYNC_OPS = {"aten::item", "aten::_local_scalar_dense"}
MATMUL_OPS = {"aten::linear", "aten::matmul", "aten::mm", "aten::addmm", "aten::bmm"}


def leaf_modules(model):
    return [(name, m) for name, m in model.named_modules() if name and not any(m.children())]


def time_leaves(model, inputs, *, steps, sync):
    \"\"\"Median share of the forward's wall-clock time per leaf module, the device synchronised
    at every module boundary, over `steps` forwards.\"\"\"
    timed = [("", model), *leaf_modules(model)]
    samples = {name: [] for name, _ in timed}
    started = {}

    def before(name):
        def hook(module, args):
            sync()
            started[name] = time.perf_counter_ns()

        return hook

    def after(name):
        def hook(module, args, output):
            sync()
            samples[name][-1] += time.perf_counter_ns() - started[name]

        return hook

    handles = []
    for name, module in timed:
        handles.append(module.register_forward_pre_hook(before(name)))
        handles.append(module.register_forward_hook(after(name)))
    try:
        for _ in range(steps):
            for values in samples.values():
                values.append(0)
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    totals = samples.pop("")
    return {
        name: statistics.median(t / total for t, total in zip(values, totals, strict=True))
        for name, values in samples.items()
    }


def profile_steps(model, inputs, *, steps, sync, cuda):
    \"\"\"torch.profiler over a few forwards, every leaf module a named range.\"\"\"
    opened, handles = [], []

    def enter(name):
        def hook(module, args):
            sync()
            opened.append(record_function(name).__enter__())

        return hook

    def leave(module, args, output):
        sync()
        opened.pop().__exit__(None, None, None)

    for name, module in leaf_modules(model):
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        with profile(activities=activities, profile_memory=not cuda) as prof:
            for _ in range(steps):
                with record_function("forward"):
                    model(inputs)
                    sync()
    finally:
        for handle in handles:
            handle.remove()
    return prof


def classify(events, module):
    \"\"\"Why `module` is slow, from the operators called directly inside its ranges.\"\"\"
    ops = [c.name for e in events if e.name == module for c in e.cpu_children]
    ops = [name for name in ops if name.startswith("aten::")]
    if not ops:
        return None
    if any(name in SYNC_OPS for name in ops):
        return "host_sync"
    matmuls = sum(name in MATMUL_OPS for name in ops)
    return "shape" if matmuls >= len(ops) / 2 else "unfused"


def activation_peak(trace_events):
    \"\"\"Highest running total of the allocator's events inside the first "forward" range.\"\"\"
    span = next(e for e in trace_events if e.get("name") == "forward" and e.get("ph") == "X")
    start, end = span["ts"], span["ts"] + span["dur"]
    changes = sorted(
        (e["ts"], e["args"]["Bytes"])
        for e in trace_events
        if e.get("name") == "[memory]" and start <= e["ts"] <= end
    )
    running = peak = 0
    for _, change in changes:
        running += change
        peak = max(peak, running)
    return peak


def cuda_memory(model, inputs):
    \"\"\"Workspace from the very first forward; activations and the allocator's reserve from
    one more forward after emptying the cache.\"\"\"
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    output = model(inputs)
    del output
    torch.cuda.synchronize()
    workspace = torch.cuda.memory_allocated() - before
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    output = model(inputs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    del output
    return {
        "activations": peak - before,
        "allocator_reserve": reserved - peak,
        "workspace": workspace,
    }


def profile_model(model, inputs, *, k, trace_path):
    cuda = inputs.is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    memory = {
        "parameters": sum(p.numel() * p.element_size() for p in model.parameters()),
        "kv_cache": sum(
            b.numel() * b.element_size()
            for name, b in model.named_buffers()
            if name.endswith(("k_cache", "v_cache"))
        ),
        "activations": None,
        "allocator_reserve": None,
        "workspace": None,
    }
    with torch.no_grad():
        if cuda:
            memory.update(cuda_memory(model, inputs))  # first: the workspace needs a first call
        for _ in range(2):
            model(inputs)
        shares = time_leaves(model, inputs, steps=10, sync=sync)
        prof = profile_steps(model, inputs, steps=2, sync=sync, cuda=cuda)
    prof.export_chrome_trace(trace_path)
    if not cuda:
        with open(trace_path) as handle:
            memory["activations"] = activation_peak(json.load(handle)["traceEvents"])
    ranked = sorted(shares.items(), key=lambda item: -item[1])[:k]
    slowest = [{"module": name, "share": share, "cause": None} for name, share in ranked]
    slowest[0]["cause"] = classify(prof.events(), slowest[0]["module"])
    return {"slowest": slowest, "memory": memory}
"""

CHECK_MD = """\
## Check yourself (this cell teaches; it does not grade)

It plants a bottleneck in the practice model twice - a bad shape in one MLP, an unfused
attention in another block - runs your `profile_model` on each, and compares what you found
with what was planted and with what it can count itself. Grading happens on the server, on a
model you have not seen, in a separate process that measures the truth itself: nothing this
notebook prints counts.
"""

CHECK_CODE = """\
def expected_bytes(model):
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    # keys and values x layers x batch x cache_len x (heads x head_dim) x 4 bytes (float32)
    kv = 2 * len(model.blocks) * 2 * 96 * 128 * 4
    return params, kv


for planted, cause in [("blocks.1.mlp.up", "shape"), ("blocks.0.attn.core", "unfused")]:
    model = practice_model(slow=f"{cause}:{planted}")
    trace = os.path.join(tempfile.mkdtemp(), "trace.json")
    answer = profile_model(model, practice_inputs(), k=3, trace_path=trace)
    first = answer["slowest"][0]
    print(f"planted {cause!r} in {planted}:")
    right = (first["module"], first["cause"]) == (planted, cause)
    share = float(first["share"])
    print(
        f"  you found {first['module']} ({share:.2f} of the time), cause {first['cause']!r}:",
        "right" if right else "WRONG",
    )
    print("  your top 3:", [(s["module"], round(float(s["share"]), 3)) for s in answer["slowest"]])
    params, kv = expected_bytes(model)
    memory = answer["memory"]
    for key, expected in (("parameters", params), ("kv_cache", kv)):
        verdict = "right" if memory[key] == expected else "WRONG"
        print(f"  {key}: you said {memory[key]}, it is {expected}: {verdict}")
    print(f"  activations {memory['activations']} bytes (the logits alone: {2 * 64 * 512 * 4})")
    ok = False
    if os.path.isfile(trace):
        with open(trace) as handle:
            ok = "traceEvents" in json.load(handle)
    print(f"  trace at trace_path: {'written' if ok else 'MISSING or not a Chrome trace'}")
"""

SUBMIT_MD = """\
## Submit

Save the notebook and upload it on the lab page (or with the CLI). The grader runs every cell,
then loads **only the cells tagged `solution`** into a separate sandboxed process, builds a
model whose sizes, slow layer and cause come from a secret seed, and calls
`profile_model(model, inputs, k=3, trace_path=...)`. In another clean process it measures the
same model itself: every leaf timed with synchronised boundaries, the median over 15 forwards
(20 on a GPU); the memory as section 4 defines it. Then it compares:

- **slowest_module**: your first module is the slowest (the one it planted, which its own
  measurement must confirm by a margin of 1.5x, or it says so and does not grade);
- **top_k**: your three are its top three (modules within 0.03 of each other are ties);
- **shares**: each within 0.1 of its measured share;
- **cause**: the right cause for your first module;
- **parameter_bytes**, **kv_cache_bytes**: exact; **activation_bytes**: within 10%;
- **trace**: your file is a Chrome trace of this model, under 20 MB. The result page offers it
  for download: open it in Perfetto;
- on GPU workers only, **allocator_reserve** and **workspace**: within 25%.

Every criterion on the result page says what you answered and what the grader measured.
Each submission gets a new seed: a new model.
"""


def build(solution: str, *, extra: list | None = None):
    """The starter notebook with `solution` as its solution cell; extra cells are learner cells."""
    cells = [
        new_markdown_cell(INTRO, id="intro"),
        new_markdown_cell(SETUP_MD, id="setup-md"),
        new_code_cell(SETUP_CODE, id="setup", metadata=dict(LOCKED)),
        new_markdown_cell(PROFILER_MD, id="profiler-md"),
        new_code_cell(PROFILER_CODE, id="profiler", metadata=dict(LOCKED)),
        new_markdown_cell(TRACE_MD, id="trace-md"),
        new_code_cell(TRACE_CODE, id="trace", metadata=dict(LOCKED)),
        new_markdown_cell(MODULES_MD, id="modules-md"),
        new_code_cell(MODULES_CODE, id="modules", metadata=dict(LOCKED)),
        new_markdown_cell(OVERHEAD_MD, id="overhead-md"),
        new_markdown_cell(CAUSE_MD, id="cause-md"),
        new_code_cell(CAUSE_CODE, id="cause", metadata=dict(LOCKED)),
        new_markdown_cell(MEMORY_MD, id="memory-md"),
        new_code_cell(MEMORY_CODE, id="memory", metadata=dict(LOCKED)),
        new_markdown_cell(TASK_MD, id="task-md"),
        new_code_cell(solution, id="solution", metadata={"tags": ["solution"]}),
        new_markdown_cell(CHECK_MD, id="check-md"),
        new_code_cell(CHECK_CODE, id="self-check", metadata=dict(LOCKED)),
        new_markdown_cell(SUBMIT_MD, id="submit-md"),
        *(extra or []),
    ]
    for cell in cells:
        # As Jupyter and `ruff format` store them: no trailing newline.
        cell.source = cell.source.rstrip("\n")
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def _replace(source: str, old: str, new: str) -> str:
    assert source.count(old) == 1, old
    return source.replace(old, new)


# Known-wrong: ranks the layers by parameter count, as if the biggest layer were the slowest.
# Right memory and trace; wrong slowest module, top k and shares.
BY_PARAMETERS = _replace(
    REFERENCE_SOLUTION,
    "    ranked = sorted(shares.items(), key=lambda item: -item[1])[:k]\n",
    "    # Wrong on purpose: the biggest layers, not the slowest.\n"
    "    sizes = {n: sum(p.numel() for p in m.parameters()) for n, m in leaf_modules(model)}\n"
    "    ranked = [(n, 1 / len(sizes)) for n in sorted(sizes, key=lambda n: -sizes[n])[:k]]\n",
)

# Known-wrong: forgets the KV cache (it is in buffers, not parameters). Fails kv_cache only.
NO_KV_CACHE = _replace(
    REFERENCE_SOLUTION,
    """        "kv_cache": sum(
            b.numel() * b.element_size()
            for name, b in model.named_buffers()
            if name.endswith(("k_cache", "v_cache"))
        ),
""",
    '        "kv_cache": 0,  # wrong on purpose: the cache is in buffers, not parameters\n',
)

# Known-wrong: counts parameters from state_dict(), which lists the tied LM head twice and
# includes the buffers. Fails parameter_bytes only.
STATE_DICT_PARAMETERS = _replace(
    REFERENCE_SOLUTION,
    '        "parameters": sum(p.numel() * p.element_size() for p in model.parameters()),\n',
    '        "parameters": sum(\n'
    "            t.numel() * t.element_size() for t in model.state_dict().values()\n"
    "        ),\n",
)

# Known-wrong: activations as the sum of every leaf module's output, not the peak.
SUMMED_OUTPUTS = _replace(
    REFERENCE_SOLUTION,
    """    if not cuda:
        with open(trace_path) as handle:
            memory["activations"] = activation_peak(json.load(handle)["traceEvents"])
""",
    """    outputs = []  # wrong on purpose: every output added up, as if none were ever freed
    handles = [
        m.register_forward_hook(lambda m, a, out: outputs.append(out.numel() * out.element_size()))
        for _, m in leaf_modules(model)
    ]
    with torch.no_grad():
        model(inputs)
    for handle in handles:
        handle.remove()
    memory["activations"] = sum(outputs)
""",
)

# Known-wrong: never exports the trace. Fails trace only.
NO_TRACE = _replace(
    REFERENCE_SOLUTION,
    """    prof.export_chrome_trace(trace_path)
    if not cuda:
        with open(trace_path) as handle:
            memory["activations"] = activation_peak(json.load(handle)["traceEvents"])
""",
    """    # Wrong on purpose: the trace goes to a file of our own, not to trace_path.
    import os
    import tempfile

    own = os.path.join(tempfile.mkdtemp(), "mine.json")
    prof.export_chrome_trace(own)
    if not cuda:
        with open(own) as handle:
            memory["activations"] = activation_peak(json.load(handle)["traceEvents"])
""",
)

# Cheat: an answer copied from one seed's result page (seed 0123...cdef on a CPU worker),
# returned for every model, with a trace written by hand. Caught: another seed plants another
# bottleneck in another model.
HARDCODED = """\
import json


def profile_model(model, inputs, *, k, trace_path):
    with open(trace_path, "w") as handle:
        json.dump({"traceEvents": [{"name": "aten::embedding"}, {"name": "aten::linear"}]}, handle)
    return {
        "slowest": [
            {"module": "blocks.2.mlp.up", "share": 0.30, "cause": "shape"},
            {"module": "blocks.2.mlp.down", "share": 0.05, "cause": None},
            {"module": "blocks.0.mlp.down", "share": 0.05, "cause": None},
        ][:k],
        "memory": {
            "parameters": 10_508_288,
            "activations": 2_883_584,
            "kv_cache": 2_752_512,
            "allocator_reserve": None,
            "workspace": None,
        },
    }
"""

# Cheat: looks for the answer instead of measuring - attributes on the model that name a
# config, a seed or the bottleneck, the grader's request in the calling frames, a table of
# planted layers in the model code's globals, config objects anywhere in memory - and guesses
# when it finds nothing. Caught: the adapter leaves none of them, so it guesses wrong.
READS_MODEL = """\
import gc
import sys

import torch

CLUES = ("config", "seed", "slow", "cause", "kind", "bottleneck", "planted")


def find_clues(model):
    found = {}
    for name, module in model.named_modules():
        for attribute, value in vars(module).items():
            if any(clue in attribute.lower() for clue in CLUES):
                found[f"{name}.{attribute}"] = value
        compute = getattr(module, "compute", None)
        for key, value in getattr(compute, "__globals__", {}).items():
            if isinstance(value, dict) and any(isinstance(k, tuple) for k in value):
                found[f"globals {key}"] = value
    frame = sys._getframe(1)
    while frame is not None:
        for key in ("request", "config", "header"):
            if key in frame.f_locals and frame.f_locals[key]:
                found[f"frame {frame.f_code.co_name}.{key}"] = frame.f_locals[key]
        frame = frame.f_back
    for obj in gc.get_objects():
        if type(obj).__name__ == "ModelConfig" or (isinstance(obj, dict) and "slow_site" in obj):
            found[f"gc {type(obj).__name__}"] = obj
    return found


def profile_model(model, inputs, *, k, trace_path):
    clues = find_clues(model)
    print("clues found:", {key: str(value)[:80] for key, value in clues.items()})
    with torch.profiler.profile() as prof, torch.no_grad():
        model(inputs)
    prof.export_chrome_trace(trace_path)
    leaves = [n for n, m in model.named_modules() if n and not any(m.children())]
    guess = [n for n in leaves if n.endswith("attn.core")][:k]  # a guess, not a measurement
    return {
        "slowest": [{"module": n, "share": 0.2, "cause": "unfused"} for n in guess],
        "memory": {
            "parameters": sum(p.numel() * p.element_size() for p in model.parameters()),
            "activations": 0,
            "kv_cache": sum(b.numel() * b.element_size() for b in model.buffers()),
            "allocator_reserve": None,
            "workspace": None,
        },
    }
"""


def fixtures() -> dict[str, object]:
    return {
        "by_parameters.ipynb": build(BY_PARAMETERS),
        "no_kv_cache.ipynb": build(NO_KV_CACHE),
        "state_dict_parameters.ipynb": build(STATE_DICT_PARAMETERS),
        "summed_outputs.ipynb": build(SUMMED_OUTPUTS),
        "no_trace.ipynb": build(NO_TRACE),
        "hardcoded.ipynb": build(HARDCODED),
        "reads_model.ipynb": build(READS_MODEL),
    }


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    nbformat.write(build(STARTER_SOLUTION), HERE / "profiling.ipynb")
    nbformat.write(build(REFERENCE_SOLUTION), HERE / "reference.ipynb")
    for name, nb in fixtures().items():
        nbformat.write(nb, FIXTURES / name)
    print(f"wrote {HERE / 'profiling.ipynb'}, reference.ipynb and {len(fixtures())} fixtures")


if __name__ == "__main__":
    main()
