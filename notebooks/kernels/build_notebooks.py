"""Write the kernels lab's notebooks: the starter, the reference solution and the test fixtures.

Run from the repository root after changing any notebook text here:

    .venv/bin/python notebooks/kernels/build_notebooks.py

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
# Kernels: a fused residual-add + RMSNorm in Triton, then through a compiler

**Milestone:** *Advanced Optimization & CUDA* - "write a simple kernel that outperforms naive
PyTorch".

Every layer of a Llama-style model ends the same way: add the layer's output to the residual
stream, then normalise with RMSNorm before the next layer reads it:

```python
h = x + residual
out = h / sqrt(mean(h ** 2, over the hidden dimension) + eps) * weight
```

Written in PyTorch this is five or six separate kernels, each reading its input from GPU
memory and writing its result back. None of them does much arithmetic, so each is limited by
**memory bandwidth**, and the whole thing moves about three times more bytes than it needs to.
In this lab you write **one** kernel, in [Triton](https://triton-lang.org/), that reads `x`
and `residual` once and writes `out` once.

**What you will do**
1. Count the bytes the unfused version moves, and see why that, not arithmetic, sets its time.
2. Read a worked Triton example (vector add): programs, blocks, masks.
3. Write `fused_add_rmsnorm(x, residual, weight, eps)` as a Triton kernel.
4. Check it here; submit it; the grader measures it.
5. Part 2: let a compiler (`torch.compile`) fuse the same block, read the profiler trace, and
   explain what it fused. An instructor grades the explanation with the lab's rubric.

**Read** (the first two are on the roadmap's list for this phase and Phase 1):
- Dao et al., *FlashAttention* ([arXiv:2205.14135](https://arxiv.org/abs/2205.14135)),
  section 2: the GPU memory hierarchy and why fusing memory-bound operations wins - the idea
  this lab applies to a much simpler operation.
- NVIDIA, [CUDA C++ Programming Guide](https://docs.nvidia.com/cuda/cuda-c-programming-guide/):
  the programming model (grids, blocks, threads) and the memory hierarchy; Triton programs map
  onto CUDA blocks.
- Triton tutorials (not on the roadmap's list, but the canonical next step):
  [Vector Addition](https://triton-lang.org/main/getting-started/tutorials/01-vector-add.html),
  [Fused Softmax](https://triton-lang.org/main/getting-started/tutorials/02-fused-softmax.html)
  (one program per row, the row in registers - exactly the pattern here) and
  [Layer Normalization](https://triton-lang.org/main/getting-started/tutorials/05-layer-norm.html)
  (RMSNorm is LayerNorm without the mean subtraction and the bias).
- Zhang and Sennrich, *Root Mean Square Layer Normalization*
  ([arXiv:1910.07467](https://arxiv.org/abs/1910.07467)).
"""

SETUP_MD = """\
## Setup

Run this first. With a GPU, Triton compiles your kernels for it. Without one, Triton's
**interpreter** runs them on the CPU with numpy (`TRITON_INTERPRET=1`): the answers are the
same, the speed means nothing, and each *program instance* runs one after another in Python -
so keep the number of programs small (one per row, never one per element). Triton reads the
variable when a `@triton.jit` function is defined, and `triton.language` defines some of its
own when it is imported, so it must be set **before `import triton`**: that is why this cell
comes first (restart the kernel if you imported triton before running it). The grader sets it
the same way on CPU workers, before your solution is loaded.
"""

SETUP_CODE = """\
import os

import torch

# Before importing triton: Triton reads TRITON_INTERPRET when a @triton.jit function is defined,
# and triton.language defines some of its own (tl.sum is one) at import.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

print("device:", DEVICE, "| triton", triton.__version__, "| torch", torch.__version__)
print("Triton interpreter:", os.environ.get("TRITON_INTERPRET") == "1")
"""

BYTES_MD = """\
## Why fusion helps: count the bytes

Take `rows x hidden` float32 tensors, `N = rows * hidden` elements, 4 bytes each. Eager
PyTorch runs each operation as its own kernel, and each kernel reads its inputs from device
memory (HBM) and writes its output back:

| step | reads | writes |
|---|---|---|
| `h = x + residual` | 2N | N |
| `h.pow(2)` | N | N |
| `.mean(-1, keepdim=True)` | N | rows |
| `+ eps`, `torch.rsqrt` | rows | rows |
| `h * inv_rms` | N (+ rows) | N |
| `* weight` | N (+ hidden) | N |
| **total** | **about 6N** | **about 4N** |

About **10N x 4 bytes** in all. A fused kernel reads `x` and `residual` once and writes `out`
once: **3N x 4 bytes** (the weight is `hidden` elements, read once and then cached). Real
engines (vLLM's `fused_add_rms_norm`) also write `h` back as the next layer's residual: 4N,
still 2.5x less than unfused.

**Arithmetic intensity** is FLOPs per byte moved. Per element the fused kernel does about five
operations (add, square, accumulate, two multiplies) for 12 bytes: **~0.4 FLOP/byte**. An
H100 SXM does ~67 TFLOP/s of fp32 (non-tensor-core) arithmetic and moves ~3.35 TB/s, so it
needs ~20 FLOP/byte before arithmetic becomes the limit (the *ridge point* of the
**roofline**). At 0.4 FLOP/byte we are fifty times below it: the time is set by the bytes,

$$t \\approx \\frac{\\text{bytes moved}}{\\text{memory bandwidth}},$$

and the best speedup fusion can give is roughly the ratio of bytes, about 10N / 3N = 3.3x.
The grader measures exactly this: your time next to the naive composition's, and your
achieved bandwidth as a % of the bandwidth a plain copy reaches on the same GPU.
"""

BYTES_CODE = """\
rows, hidden = 8192, 4096  # a batch of tokens x a Llama-7B hidden size
N = rows * hidden
unfused = (6 * N + 4 * N) * 4
fused = 3 * N * 4 + hidden * 4
# bytes/s: what a 1 GiB device copy reached on an H100 80GB HBM3 (read + write, measured by
# this project on 2026-11-27, docs/benchmarks/measurement.md); the grader measures its own node
bandwidth = 3.0e12
flops = 5 * N
print(f"unfused: {unfused / 1e6:7.1f} MB -> at least {unfused / bandwidth * 1e6:6.1f} us")
print(f"fused:   {fused / 1e6:7.1f} MB -> at least {fused / bandwidth * 1e6:6.1f} us")
print(f"best possible speedup from fusion: {unfused / fused:.1f}x")
print(f"arithmetic intensity of the fused kernel: {flops / fused:.2f} FLOP/byte")
"""

TRITON_MD = """\
## Triton in one example: vector add

A Triton kernel is a Python function decorated with `@triton.jit` that runs once per
**program** in a *grid* of programs (a CUDA block, roughly; the Triton compiler picks the
threads). Each program works on a **block** of elements at once:

- `tl.program_id(0)` - which program this is;
- `tl.arange(0, BLOCK)` - a vector of offsets `0 .. BLOCK-1`; `BLOCK` must be a
  `tl.constexpr` and a **power of two**;
- `tl.load(ptr + offsets, mask=mask, other=0.0)` - load a block; lanes where `mask` is false
  are not read and get `other` instead;
- `tl.store(ptr + offsets, values, mask=mask)` - store a block; masked lanes are not written.

Masks are how a power-of-two block handles sizes that are not powers of two: the last block of
a vector of 1000 elements covers offsets 768..1023, and the mask `offsets < 1000` switches the
last 24 lanes off. Without it the kernel reads and writes past the end of the tensor.

The host-side wrapper allocates the output and launches the grid with `kernel[grid](...)`;
tensors are passed as pointers.
"""

VECTOR_ADD_CODE = """\
@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n  # the last block may hang over the end
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    n = x.numel()
    grid = (triton.cdiv(n, 256),)  # enough programs of 256 elements to cover n
    add_kernel[grid](x, y, out, n, BLOCK=256)
    return out


a, b = torch.randn(1000, device=DEVICE), torch.randn(1000, device=DEVICE)
print("vector add matches torch:", torch.equal(add(a, b), a + b))
"""

RMSNORM_MD = """\
## RMSNorm, one program per row

For one row $h$ of length $n$ (the hidden size):

$$\\mathrm{out}_i = \\frac{h_i}{\\sqrt{\\tfrac{1}{n}\\sum_j h_j^2 + \\varepsilon}}\\; w_i$$

The statistic is per row, so the natural kernel is **one program per row** (grid `(rows,)`),
with the whole row in one block, as in the *Fused Softmax* tutorial:

1. **Pick BLOCK** as the next power of two >= hidden: `triton.next_power_of_2(hidden)`
   (4096 -> 4096, 4099 -> 8192, 1000 -> 1024). The row fits in registers for LLM sizes
   up to ~16k-32k in fp32; beyond that, loop over the row in chunks (the *Layer
   Normalization* tutorial shows how).
2. **Mask** with `cols < hidden`, and load masked lanes as `other=0.0`, so that they add
   nothing to the sum of squares.
3. **Divide by `hidden`, not by `BLOCK`.** The mean is over the real elements; with a
   non-power-of-two hidden size, `tl.sum(h * h) / BLOCK` is silently wrong.
4. **Accumulate in float32.** Here the inputs are float32 already; with fp16 or bf16 inputs
   load them, cast with `.to(tl.float32)`, reduce and normalise in fp32, and cast back when
   storing. A sum of thousands of squares in half precision loses digits (and overflows fp16
   above 65504).
5. **eps goes inside the square root**: `1 / sqrt(mean + eps)` (or `tl.rsqrt(mean + eps)`).
   It is what keeps a row of zeros from giving 0 / 0 = NaN, and it matters when activations
   are small.
6. **Row addresses.** Row `r` starts at `ptr + r * row_stride`. Pass `x.stride(0)` rather than
   assuming `hidden`, and compute the offset in 64-bit
   (`tl.program_id(0).to(tl.int64)`): `rows * hidden` passes 2^31 sooner than you think.
7. **num_warps** (GPU only; the interpreter ignores it): more warps for wider rows, e.g.
   `min(max(BLOCK // 256, 1), 16)`.
"""

TASK_MD = """\
## Your task

Fill in the cell below (it is tagged `solution`; keep the tag and the name
`fused_add_rmsnorm`):

- inputs: `x` and `residual`, float32 tensors of shape `(rows, hidden)` on the same device;
  `weight`, float32 of shape `(hidden,)`; `eps`, a Python float;
- output: a **new** float32 tensor of shape `(rows, hidden)`,
  `h / sqrt(mean(h^2, -1) + eps) * weight` with `h = x + residual`;
- do not modify `x`, `residual` or `weight`, and do not return one of them or a view of one;
- the cell must stand alone: the grader loads **only** the cells tagged `solution`, in a fresh
  process, so import what you use there (`torch`, `triton`, `triton.language as tl`) and do
  not rely on `DEVICE` or anything else defined in other cells;
- write it in Triton: a `@triton.jit` kernel and a Python wrapper that launches it.

This lab uses **float32** on CPU and (for now) on GPU; half-precision inputs come later.
"""

STARTER_SOLUTION = """\
import torch
import triton
import triton.language as tl


@triton.jit
def _fused_add_rmsnorm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    hidden,
    x_stride,
    r_stride,
    out_stride,
    eps,
    BLOCK: tl.constexpr,
):
    # TODO: one program per row. Load the row of x and of residual (masked), h = x + residual,
    # mean of h * h over the real `hidden` elements, then store h * rsqrt(mean + eps) * weight.
    pass


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    \"\"\"h = x + residual; return h / sqrt(mean(h^2, -1) + eps) * weight, in one kernel.\"\"\"
    raise NotImplementedError(
        "Implement fused_add_rmsnorm: launch _fused_add_rmsnorm_kernel on a grid of (rows,) "
        "with BLOCK = triton.next_power_of_2(hidden), mask the columns past hidden, and "
        "return a new tensor"
    )
"""

REFERENCE_SOLUTION = """\
import torch
import triton
import triton.language as tl


@triton.jit
def _fused_add_rmsnorm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    hidden,
    x_stride,
    r_stride,
    out_stride,
    eps,
    BLOCK: tl.constexpr,
):
    # One program per row; 64-bit row offsets so that rows * hidden may pass 2**31.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden  # BLOCK is a power of two >= hidden: switch the extra lanes off
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(residual_ptr + row * r_stride + cols, mask=mask, other=0.0).to(tl.float32)
    h = x + r
    # Masked lanes are 0 and add nothing; divide by the real length, not by BLOCK.
    mean_square = tl.sum(h * h, axis=0) / hidden
    inv_rms = 1.0 / tl.sqrt(mean_square + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, h * inv_rms * w, mask=mask)


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    \"\"\"h = x + residual; return h / sqrt(mean(h^2, -1) + eps) * weight, in one kernel.\"\"\"
    rows, hidden = x.shape
    # The kernel assumes unit stride along the row.
    x, residual, weight = x.contiguous(), residual.contiguous(), weight.contiguous()
    out = torch.empty_like(x)
    block = triton.next_power_of_2(hidden)
    _fused_add_rmsnorm_kernel[(rows,)](
        x,
        residual,
        weight,
        out,
        hidden,
        x.stride(0),
        residual.stride(0),
        out.stride(0),
        eps,
        BLOCK=block,
        num_warps=min(max(block // 256, 1), 16),
    )
    return out
"""

CHECK_MD = """\
## Check yourself (this cell teaches; it does not grade)

It compares your function with the formula computed in float64, on a few small shapes: one
element, hidden sizes that are not powers of two, tiny activations where eps matters, and a
row that sums to exactly zero. Grading happens on the server, on inputs you have not seen, in
a separate process - nothing this notebook prints counts.
"""

CHECK_CODE = """\
def float64_reference(x, residual, weight, eps):
    h = x.double() + residual.double()
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


torch.manual_seed(0)
checks = {
    "1x1": (1, 1, 1.0, 1e-6),
    "3x7": (3, 7, 1.0, 1e-5),
    "17x1000 (not a power of two)": (17, 1000, 1.0, 1e-6),
    "4x4099 (BLOCK is 8192)": (4, 4099, 1.0, 1e-6),
    "tiny activations, eps=1e-2": (5, 300, 1e-3, 1e-2),
}
for name, (rows, hidden, scale, eps) in checks.items():
    x = torch.randn(rows, hidden, device=DEVICE) * scale
    residual = torch.randn(rows, hidden, device=DEVICE) * scale
    if name == "3x7":
        residual[0] = -x[0]  # h is exactly zero in this row: only eps keeps it finite
    weight = torch.rand(hidden, device=DEVICE) * 4 - 2
    got = fused_add_rmsnorm(x.clone(), residual.clone(), weight.clone(), eps)
    want = float64_reference(x, residual, weight, eps)
    ok = got.shape == want.shape and got.dtype == torch.float32
    if ok:
        error = (got.double() - want).abs()
        ok = bool((error <= 1e-6 + 1e-5 * want.abs()).all())
    print(f"{name:30s} {'matches' if ok else 'DIFFERS from'} the float64 formula")
"""

SUBMIT_MD = """\
## Submit

Save the notebook and upload it on the lab page (or with the CLI). The grader runs every cell,
then loads **only the cells tagged `solution`** into a separate sandboxed process and:

1. **correct, finite** (CPU and GPU workers): checks your output against a float64 reference
   on fresh random inputs at ten shapes (fifteen on GPU, up to 4096 x 4096 and 1024 x 8192),
   like the self-check's and each shape met twice with different values; tolerance
   `1e-6 + 1e-5 x |expected|` per element (the float32 default); any NaN or Inf fails. On a
   CPU worker your kernel runs in Triton's interpreter.
2. **speed** (GPU workers only): times your function and the naive PyTorch composition
   `h = x + residual; h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight`,
   interleaved in the same run at 4096 x 4096, with CUDA events after an L2 flush; the lower
   end of the speedup's 95% confidence interval must be above 1.0.
3. **bandwidth** (GPU workers only): your bytes moved (read x and residual, write out) per
   second, as a % of the copy bandwidth measured on the same GPU.

**CUDA C++ instead of Triton?** Submitted to a GPU worker, your solution cell may build the
kernel with `torch.utils.cpp_extension.load_inline(...)` (nvcc, g++ and ninja are there; the
build takes a minute and counts against the load time); it is graded the same way. CPU
workers have no CUDA compiler: use Triton there.

A CPU worker's report lists speed and bandwidth as *not evaluated*: they are GPU-only. A
pure-PyTorch answer (no Triton) passes on a CPU worker - the lab is graded by measuring, not by
reading your code - but it is the naive composition, and on a GPU it fails the speed bar.

Part 2 (below) is read by an instructor, not by the grader: your explanation is scored with
the lab's rubric once you submit.
"""

PART2_MD = """\
# Part 2: the same fusion, done by a compiler

Writing a kernel by hand is how you learn what fusion is; in production a **compiler** usually
does it. `torch.compile` traces your PyTorch code into a graph (TorchDynamo), and its default
backend, **TorchInductor**, groups the elementwise and reduction operations of that graph
into as few kernels as it can: on a GPU it writes them in Triton - the language you just
used - and on a CPU in C++ with OpenMP. Its kernel names say what went in:
`triton_per_fused_add_mean_mul_pow_rsqrt_0` is one *persistent reduction* kernel ("per")
that fused an add, a mean, a multiply, a power and an rsqrt.

The roadmap names **NVIDIA TensorRT** for this step. TensorRT is not installed on this
project's grading workers (it needs NVIDIA's own packages and an engine build per GPU), so
this lab uses `torch.compile` instead; if you have TensorRT, `torch_tensorrt.compile` on the
same function is the comparison to make, and its engine inspector plays the profiler's role
here.

**How to see what was fused:**
- the profiler's table and trace (below): the eager block launches one kernel per operation
  (`aten::add`, `aten::pow`, `aten::mean`, `aten::add`, `aten::rsqrt`, `aten::mul` x 2); the
  compiled one launches what Inductor generated;
- `TORCH_LOGS=output_code python your_script.py` prints the generated kernels' source;
- open the exported `.json` traces in [Perfetto](https://ui.perfetto.dev) or
  `chrome://tracing` and compare the GPU rows of the two runs.

**Read:** [torch.compile tutorial](https://pytorch.org/tutorials/intermediate/torch_compile_tutorial.html),
[PyTorch Profiler](https://pytorch.org/docs/stable/profiler.html) (on the roadmap's Phase 1
list), and the [TorchInductor design post](https://dev-discuss.pytorch.org/t/torchinductor-a-pytorch-native-compiler-with-define-by-run-ir-and-symbolic-shapes/747).

On a CPU, compiling needs a C++ compiler and takes half a minute or more, so the cell below
skips it unless you set `RUN_COMPILE_ON_CPU = True`. On a GPU it always runs, and it also
times eager, compiled and your own kernel side by side.
"""

PART2_CODE = """\
import time

from torch.profiler import ProfilerActivity, profile

RUN_COMPILE_ON_CPU = False  # on a CPU: needs a C++ compiler, and ~30-60 s to compile


def naive_block(x, residual, weight, eps: float = 1e-6):
    h = x + residual
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight


def profile_run(fn, args, *, steps=5, trace=None):
    \"\"\"Run `fn` a few times under the profiler (after one untraced call) and return it.\"\"\"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    fn(*args)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn(*args)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    if trace:
        prof.export_chrome_trace(trace)
    return prof


if DEVICE == "cuda" or RUN_COMPILE_ON_CPU:
    rows, hidden = (4096, 4096) if DEVICE == "cuda" else (256, 1024)
    x, residual = (torch.randn(rows, hidden, device=DEVICE) for _ in range(2))
    weight = torch.rand(hidden, device=DEVICE)
    compiled_block = torch.compile(naive_block)
    start = time.perf_counter()
    out = compiled_block(x, residual, weight)
    print(f"first call of the compiled block (it compiles): {time.perf_counter() - start:.1f} s")
    torch.testing.assert_close(out, naive_block(x, residual, weight), rtol=1e-5, atol=1e-5)
    sort = "self_cuda_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
    for name, fn in (("eager", naive_block), ("compiled", compiled_block)):
        prof = profile_run(fn, (x, residual, weight), trace=f"{name}_trace.json")
        print(f"\\n--- {name}: what ran in 5 calls (trace: {name}_trace.json) ---")
        print(prof.key_averages().table(sort_by=sort, row_limit=10))
    if DEVICE == "cuda":
        from triton.testing import do_bench

        contenders = {
            "eager PyTorch": lambda: naive_block(x, residual, weight),
            "torch.compile": lambda: compiled_block(x, residual, weight),
            "your Triton kernel": lambda: fused_add_rmsnorm(x, residual, weight, 1e-6),
        }
        for name, call in contenders.items():
            print(f"{name:20s} {do_bench(call) * 1e3:9.1f} us per call at {rows} x {hidden}")
else:
    print("No GPU here and RUN_COMPILE_ON_CPU is False: the compile step is skipped.")
"""

EXPLAIN_MD = """\
## Your explanation (graded by an instructor with the rubric)

In the markdown cell below, from what the profiler showed you (run part 2 on a GPU if you
can; on a CPU with `RUN_COMPILE_ON_CPU = True` otherwise, and say which), explain:

1. **What was fused**: which operations of `naive_block` ended up in which generated
   kernel(s), by name, and how many kernels each version launched per call.
2. **Evidence**: quote what you saw - kernel names, counts, times from the table or trace.
3. **Why it is faster** (or why not): in bytes moved per element and launches, using part 1's
   byte count; and how the compiled kernel compares with yours.

A few short paragraphs are enough. Keep the cell's tag (`explanation`): that is how the
instructor's page finds your answer.
"""

EXPLANATION_STARTER = """\
*Replace this text with your explanation (what was fused, your evidence, why it is faster).*
"""

# The reference's answer: what full marks look like, for instructors (never served).
EXPLANATION_REFERENCE = """\
**What was fused.** Eager PyTorch runs `naive_block` as separate kernels: `aten::add`
(x + residual), `aten::pow`, `aten::mean` (a reduction), `aten::add` (+ eps), `aten::rsqrt`
and two `aten::mul` - 7 launches per call, each reading its inputs from HBM and writing its
result back. `torch.compile` (TorchInductor) generated a single Triton kernel,
`triton_per_fused_add_mean_mul_pow_rsqrt_0`: one persistent reduction per row that does the
add, the square, the mean, the rsqrt and both multiplies with the row held on chip.

**Evidence.** In the profiler table the compiled run shows one GPU kernel with 5 calls for 5
calls of the block, against 35 kernel launches for eager; the trace's GPU row for the compiled
run is one bar per call. At 4096 x 4096 float32 the eager block took several times longer per
call than the compiled one, and the compiled kernel was within a few percent of my Triton
kernel.

**Why.** Everything here is memory-bound (~0.4 FLOP per byte). The eager version moves about
10 float32 values per element (reads and writes of every intermediate: h, h^2, the product),
the fused one 3 (read x and residual, write out) - so the best case is ~3.3x, and launch
overhead shrinks by 7x. The compiled kernel and mine do the same work, one program per row,
so they run at about the same fraction of the copy bandwidth.
"""


def build(solution: str, *, extra: list | None = None, explanation: str = EXPLANATION_STARTER):
    """The starter notebook with `solution` as its solution cell and `explanation` in part 2's
    answer cell; extra cells are learner cells."""
    cells = [
        new_markdown_cell(INTRO, id="intro"),
        new_markdown_cell(SETUP_MD, id="setup-md"),
        new_code_cell(SETUP_CODE, id="setup", metadata=dict(LOCKED)),
        new_markdown_cell(BYTES_MD, id="bytes-md"),
        new_code_cell(BYTES_CODE, id="bytes", metadata=dict(LOCKED)),
        new_markdown_cell(TRITON_MD, id="triton-md"),
        new_code_cell(VECTOR_ADD_CODE, id="vector-add", metadata=dict(LOCKED)),
        new_markdown_cell(RMSNORM_MD, id="rmsnorm-md"),
        new_markdown_cell(TASK_MD, id="task-md"),
        new_code_cell(solution, id="solution", metadata={"tags": ["solution"]}),
        new_markdown_cell(CHECK_MD, id="check-md"),
        new_code_cell(CHECK_CODE, id="self-check", metadata=dict(LOCKED)),
        new_markdown_cell(SUBMIT_MD, id="submit-md"),
        *(extra or []),
        new_markdown_cell(PART2_MD, id="part2-md"),
        new_code_cell(PART2_CODE, id="part2-compile"),
        new_markdown_cell(EXPLAIN_MD, id="explain-md"),
        new_markdown_cell(explanation, id="explanation", metadata={"tags": ["explanation"]}),
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


# A known-wrong kernel: forgets eps. Right on most rows, NaN where h is zero, and far off on
# tiny activations where eps dominates the mean square.
NO_EPS = REFERENCE_SOLUTION.replace(
    "    inv_rms = 1.0 / tl.sqrt(mean_square + eps)\n",
    "    inv_rms = 1.0 / tl.sqrt(mean_square)  # forgot eps\n",
)

# A known-wrong kernel: the classic mask bug, dividing by BLOCK instead of the real hidden size.
# Right whenever hidden is a power of two; wrong for every other shape.
MEAN_OVER_BLOCK = REFERENCE_SOLUTION.replace(
    "    mean_square = tl.sum(h * h, axis=0) / hidden\n",
    "    mean_square = tl.sum(h * h, axis=0) / BLOCK  # wrong unless hidden is a power of 2\n",
)

# Correct, but no Triton: the naive composition itself. Passes on a CPU worker (graded by
# measuring); on a GPU it is the baseline, so its speedup is ~1 and it fails the speed bar.
PURE_PYTORCH = """\
import torch


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    h = x + residual
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight
"""

# Cheat: remember the first answer for each shape and return it for every later input of that
# shape (and for the same input pointer), skipping the work.
CACHED = """\
import torch

_BY_SHAPE = {}


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    key = (tuple(x.shape), x.data_ptr())
    shape_key = tuple(x.shape)
    if key in _BY_SHAPE:
        return _BY_SHAPE[key]
    if shape_key in _BY_SHAPE:
        return _BY_SHAPE[shape_key]
    h = x + residual
    out = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight
    _BY_SHAPE[key] = _BY_SHAPE[shape_key] = out
    return out
"""

# Cheat: look for the grader's secret seed, and make every comparison and clock lie.
MONKEYPATCH = """\
import glob
import os
import re
import sys
import time

import torch

_HEX = re.compile(r"\\b[0-9a-f]{32}\\b")
FOUND = [s for v in os.environ.values() for s in _HEX.findall(v)]
for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    try:
        with open(path, "rb") as handle:
            FOUND += _HEX.findall(handle.read().decode("latin-1"))
    except OSError:
        pass
print("seed candidates found:", FOUND)
torch.allclose = lambda *args, **kwargs: True
if "ipykernel" not in sys.modules:  # only where the grader loads it
    time.perf_counter_ns = lambda: 0


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    return torch.zeros_like(x)
"""


# CUDA C++ instead of Triton, through torch.utils.cpp_extension.load_inline: accepted on GPU
# nodes (nvcc, g++ and ninja there; the sandbox's /usr and the torch environment carry them).
# One block per row, the sum of squares reduced in shared memory, x and residual read twice
# (the second time mostly from L2). GPU only: on a CPU worker there is no nvcc or CUDA.
CUDA_CPP = """\
import torch
from torch.utils.cpp_extension import load_inline

CUDA_SOURCE = r\"\"\"
#include <torch/extension.h>

__global__ void fused_add_rmsnorm_kernel(
    const float* __restrict__ x, const float* __restrict__ r, const float* __restrict__ w,
    float* __restrict__ out, int hidden, float eps) {
  const long long base = (long long)blockIdx.x * hidden;
  extern __shared__ float partial[];
  float sum = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float h = x[base + i] + r[base + i];
    sum += h * h;
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  const float inv = 1.0f / sqrtf(partial[0] / hidden + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    out[base + i] = (x[base + i] + r[base + i]) * inv * w[i];
  }
}

torch::Tensor fused_add_rmsnorm_cuda(torch::Tensor x, torch::Tensor r, torch::Tensor w,
                                     double eps) {
  auto xc = x.contiguous(), rc = r.contiguous(), wc = w.contiguous();
  auto out = torch::empty_like(xc);
  const int rows = xc.size(0), hidden = xc.size(1), threads = 256;
  fused_add_rmsnorm_kernel<<<rows, threads, threads * sizeof(float)>>>(
      xc.data_ptr<float>(), rc.data_ptr<float>(), wc.data_ptr<float>(), out.data_ptr<float>(),
      hidden, (float)eps);
  return out;
}
\"\"\"

_extension = load_inline(
    "fused_add_rmsnorm_extension",
    cpp_sources="torch::Tensor fused_add_rmsnorm_cuda(torch::Tensor x, torch::Tensor r, "
    "torch::Tensor w, double eps);",
    cuda_sources=CUDA_SOURCE,
    functions=["fused_add_rmsnorm_cuda"],
)


def fused_add_rmsnorm(x, residual, weight, eps):
    return _extension.fused_add_rmsnorm_cuda(x, residual, weight, float(eps))
"""


def fixtures() -> dict[str, object]:
    assert NO_EPS != REFERENCE_SOLUTION and MEAN_OVER_BLOCK != REFERENCE_SOLUTION
    return {
        "no_eps.ipynb": build(NO_EPS),
        "mean_over_block.ipynb": build(MEAN_OVER_BLOCK),
        "pure_pytorch.ipynb": build(PURE_PYTORCH),
        "cached.ipynb": build(CACHED),
        "monkeypatch.ipynb": build(MONKEYPATCH),
        "cuda_cpp.ipynb": build(CUDA_CPP),
    }


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    nbformat.write(build(STARTER_SOLUTION), HERE / "kernels.ipynb")
    nbformat.write(
        build(REFERENCE_SOLUTION, explanation=EXPLANATION_REFERENCE), HERE / "reference.ipynb"
    )
    for name, nb in fixtures().items():
        nbformat.write(nb, FIXTURES / name)
    print(f"wrote {HERE / 'kernels.ipynb'}, reference.ipynb and {len(fixtures())} fixtures")


if __name__ == "__main__":
    main()
