"""Write the quantization lab's notebooks: the starter, the reference solution and the test
fixtures.

Run from the repository root after changing any notebook text here:

    .venv/bin/python notebooks/quantization/build_notebooks.py

The generated .ipynb files are committed; tests read them as real uploads would arrive.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # notebooks/notebook_build.py

from notebook_build import LOCKED, notebook  # noqa: E402

FIXTURES = HERE / "fixtures"

INTRO = """\
# Quantization: INT8, INT4 and GPTQ on a real Llama

**Milestone:** *Model Serving & Quantization* - "quantize a 7B LLM, serve it, and demonstrate
3x throughput with <1% quality loss". This lab is the quantization half; the serving lab adds
batching on top.

You will write **weight-only** quantization for a Llama model: its weights are stored as small
integers plus a few scales, and turned back into floating point (*dequantized*) when a layer
runs; activations stay in floating point. The model is the project's own 3.8M-parameter Llama
(4 layers, hidden 256, trained on the Python standard library's docstrings,
`runner/llm/DATA_CARD.md`), committed in **bfloat16**: that is the baseline every number here
is compared with.

**What you will do**
1. Round a few numbers by hand: symmetric and asymmetric, per tensor, per channel, per group.
2. Pack two 4-bit values into a byte, and count what the model's bytes become.
3. Read how GPTQ and AWQ use a little calibration text to round better.
4. Write `quantize(model, method, *, group_size, calibration)` for `"int8"`, `"int4"` and
   `"int4-calibrated"`; check it here; submit it; the grader measures it.

**Read** (on the roadmap's list for this phase):
- Frantar et al., *GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
  Transformers* ([arXiv:2210.17323](https://arxiv.org/abs/2210.17323)), sections 3-4.
- Lin et al., *AWQ: Activation-aware Weight Quantization for LLM Compression and
  Acceleration* ([arXiv:2306.00978](https://arxiv.org/abs/2306.00978)), sections 2-3.
- Dettmers et al., *LLM.int8()* ([arXiv:2208.07339](https://arxiv.org/abs/2208.07339)),
  section 2: absmax (symmetric) and zero-point (asymmetric) quantization, with outliers.
"""

SETUP_CODE = """\
import math

import torch
import torch.nn.functional as F
from torch import nn

from runner.llm import corpus, load_model
from runner.llm import tokenizer as tokenization

torch.manual_seed(0)
model = load_model(dtype=torch.bfloat16)  # as committed
print(model.config.num_hidden_layers, "layers, hidden", model.config.hidden_size)
for name, module in model.model.layers[0].named_modules():
    if isinstance(module, nn.Linear):
        print(f"  layers.0.{name}: {tuple(module.weight.shape)}  (out_features, in_features)")
"""

BASICS_MD = """\
## 1. Rounding to integers: scale, zero point, and how many scales

To store a weight `w` in `b` bits we pick a **scale** `s` and store `q = round(w / s)`:

- **Symmetric** (absmax): `s = max|w| / (2^(b-1) - 1)`, `q` in `[-127, 127]` for INT8. Zero is
  exactly representable; half the range is wasted if all weights are positive.
- **Asymmetric** (zero point): `s = (max w - min w) / (2^b - 1)`, `z = round(-min w / s)`,
  `q = round(w / s) + z` in `[0, 15]` for INT4, and `w ~ (q - z) * s`. Uses every level
  when the weights are not centred on zero; costs one more number per scale.

**How many scales?** One per tensor is cheap but one large weight sets the step for all of
them. One per output row (**per channel**) is the usual INT8 choice: each row is one output's
dot product, so the scale factors out of the sum. At 4 bits that is still too coarse: one
scale per **group** of 32-128 consecutive inputs of a row is standard (GPTQ, AWQ, llama.cpp).
The cell measures the rounding error on a real weight of this model.
"""

BASICS_CODE = """\
w = model.model.layers[1].mlp.up_proj.weight.detach().float()  # 688 x 256


def fake_quant(w, bits, *, groups_of=None, symmetric=True):
    \"\"\"Round to `bits` and back; one scale per `groups_of` inputs (None: per tensor).\"\"\"
    x = w.reshape(-1, groups_of) if groups_of else w.reshape(1, -1)
    if symmetric:
        s = x.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
        return (torch.round(x / s) * s).reshape(w.shape)
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    s = (hi - lo) / (2**bits - 1)
    z = torch.round(-lo / s)
    return ((torch.clamp(torch.round(x / s) + z, 0, 2**bits - 1) - z) * s).reshape(w.shape)


def relative_error(a):
    return ((a - w).norm() / w.norm()).item()


for bits in (8, 4):
    print(f"INT{bits}:")
    print(f"  per tensor          {relative_error(fake_quant(w, bits)):.4f}")
    print(f"  per row (256)       {relative_error(fake_quant(w, bits, groups_of=256)):.4f}")
    print(f"  per group of 64     {relative_error(fake_quant(w, bits, groups_of=64)):.4f}")
    asymmetric = fake_quant(w, bits, groups_of=64, symmetric=False)
    print(f"  group 64, asymmetric {relative_error(asymmetric):.4f}")
"""

PACKING_MD = """\
## 2. Packing, and why weight-only quantization speeds up decoding

PyTorch has no 4-bit dtype: a `torch.int8` tensor of 4-bit values still takes **a byte each**.
To halve it, pack two values per byte, `byte = q_even | (q_odd << 4)` as `torch.uint8`, and
unpack with `& 0xF` and `>> 4`. The grader counts the **real bytes** of every tensor your model
holds, so unpacked INT4 measures like INT8.

**Why bother?** Generating one token at batch 1 multiplies each weight matrix by a single
vector: two FLOPs per weight, and every weight read from memory once. An H100 does ~990 bf16
TFLOP/s but reads ~3.35 TB/s, so a 7B model in bf16 (13.5 GB) needs at least 4 ms per token
to *read* its weights, and ~0.01 ms to do the arithmetic: decoding is **memory-bound**, and
halving the bytes (INT8) or quartering them (INT4) can nearly halve or quarter that time - if
the kernel reads the small integers and dequantizes *in registers*. Dequantizing the whole
matrix to bf16 first (what a simple `QuantLinear` does) writes and re-reads a bf16 copy and is
slower than bf16; it still saves the memory. At large batch the matmul becomes compute-bound
and weight-only quantization stops helping speed: that is where batching (the serving lab) and
INT8/FP8 activations come in.
"""

PACKING_CODE = """\
q = torch.randint(0, 16, (4, 8), dtype=torch.uint8)
packed = q[:, 0::2] | (q[:, 1::2] << 4)
unpacked = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(4, 8)
assert torch.equal(unpacked, q)
print("4 x 8 values ->", packed.shape, "bytes:", packed.numel())

layer_params = sum(p.numel() for p in model.model.layers.parameters())
print(f"decoder layers: {layer_params:,} parameters = {2 * layer_params:,} bytes in bf16")
print(f"  INT8 ~ {layer_params:,} bytes + scales; INT4 ~ {layer_params // 2:,} bytes + scales")
print(f"  the tied embedding stays bf16: {2 * model.model.embed_tokens.weight.numel():,} bytes")
"""

GPTQ_MD = """\
## 3. GPTQ and AWQ: rounding with a little calibration text

Plain **round-to-nearest** (RTN) rounds every weight on its own. But a layer's error is
`(W_q - W) X` on real inputs `X`, not `W_q - W`: some input channels are large and matter
more, and errors in different columns can cancel. Both methods run a few hundred tokens of
**calibration** text through the model to see `X`.

**GPTQ** (Frantar et al.) quantizes one input column at a time and pushes each column's
rounding error onto the columns **not yet quantized**, so they can compensate. With
`H = 2 X X^T` (the Hessian of the layer's squared error), the best update after rounding
column `i` is `W[:, i+1:] -= err_i * Hinv[i, i+1:] / Hinv[i, i]`. The paper's tricks make it
fast and stable: a Cholesky factor of `H^-1` (computed once, with a little damping
`0.01 * mean(diag H)` added), and blocks of columns.

*Worked example.* Two inputs that are always equal (`x1 = x2`), weights `[0.3, 0.3]`, step
1.0: RTN gives `[0, 0]`, output error `0.6 x`. GPTQ rounds the first to 0 (error 0.3), and
since the inputs are correlated moves the error onto the second: `0.3 + 0.3 = 0.6`, rounded to
1: output `1.0 x`, error `0.4 x` - better, using only what the calibration data showed. The
cell below runs exactly this.

**AWQ** (Lin et al.) keeps rounding to nearest but first **scales** each input channel: weights
that meet large activations (the ~1% *salient* channels) are multiplied by `s > 1` before
rounding and the activation divided by `s` (folded into the previous layer or norm), so they
lose less precision. `s = mean|x|^alpha`, with `alpha` in [0, 1] chosen per layer by trying a
grid on the calibration set. Cheaper than GPTQ (no Hessian), and robust to the calibration text.

**Trade-offs.** INT8 per channel is nearly free in quality. INT4 RTN loses more; GPTQ and AWQ
recover much of it, at the cost of calibration data and time (minutes for a 7B model). Smaller
groups cost bytes (a 2-byte scale per 32 weights is 0.5 bits per weight) and buy quality.
Speed needs kernels that read packed weights: torchao, Marlin, ExLlama, llama.cpp, or torch's
own tinygemm INT4 kernel on CUDA (`torch.ops.aten._weight_int4pack_mm`, sm80 and later).
"""

GPTQ_CODE = """\
x = torch.randn(1000, 1)
X = torch.cat([x, x], dim=1)  # two perfectly correlated inputs
W = torch.tensor([[0.3, 0.3]])
H = 2 * X.T @ X / len(X) + 0.01 * torch.eye(2)
Hinv = torch.linalg.inv(H)
rtn = torch.round(W)
gptq = W.clone()
gptq[0, 0] = torch.round(gptq[0, 0])
err = W[0, 0] - gptq[0, 0]
gptq[0, 1] += err * (-Hinv[0, 1] / Hinv[0, 0])  # = err here: the inputs move together
gptq[0, 1] = torch.round(gptq[0, 1])
for name, Wq in (("RTN", rtn), ("GPTQ", gptq)):
    print(f"{name}: {Wq.tolist()}  output error {((Wq - W) @ X.T).pow(2).mean().sqrt():.3f}")
"""

TORCHAO_MD = """\
## A library baseline: torchao

[torchao](https://github.com/pytorch/ao) implements the same methods with fast kernels
(`quantize_(model, Int8WeightOnlyConfig())`, `Int4WeightOnlyConfig(group_size=64)`). Its INT4
kernels need a CUDA GPU. The cell compares with it where it is installed; it is **not** a
dependency of this project and is not installed on its CPU workers, so there the cell says so
and skips.
"""

TORCHAO_CODE = """\
try:
    import torchao  # noqa: F401
except ImportError:
    print("torchao is not installed here: skipping the library comparison.")
else:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    baseline = load_model(dtype=torch.bfloat16)
    quantize_(baseline, Int8WeightOnlyConfig())
    print("torchao int8 weight-only:", type(baseline.model.layers[0].mlp.up_proj.weight).__name__)
"""

TASK_MD = """\
## 4. Your task

Write `quantize(model, method, *, group_size=64, calibration=None)` in the cell tagged
`solution`. It receives the bf16 model and returns a model (the same one changed in place is
fine) that is still called as `model(input_ids).logits`, with:

- `"int8"`: every `nn.Linear` of the decoder layers (`model.model.layers`) with an INT8 weight,
  symmetric, one scale per output row;
- `"int4"`: the same layers with INT4 weights, one scale (and zero point) per `group_size`
  inputs, **packed two to a byte**. `mlp.down_proj` has 688 inputs: its last group is 48 wide;
- `"int4-calibrated"`: INT4 in the same format, rounded with GPTQ or AWQ using `calibration`, a
  `LongTensor` of token windows `[n, tokens]` from the training text.

Leave the tied embedding and `lm_head` alone (they are one tensor). A `QuantLinear(nn.Module)`
that holds its integers and scales as **buffers** (`register_buffer`) and dequantizes in
`forward` is the simple way. Do not keep the original weights anywhere: every tensor left
alive counts. Helpers may live in the same cell.
"""

STARTER_SOLUTION = """\
import torch
from torch import nn


def quantize(model, method, *, group_size=64, calibration=None):
    \"\"\"Return `model` with its decoder layers' nn.Linear weights quantized by `method`:
    "int8", "int4" or "int4-calibrated".\"\"\"
    raise NotImplementedError(
        "quantize() is not written yet: replace every nn.Linear in model.model.layers by a "
        "module that stores integer weights (int8, or int4 packed two per byte) and scales, "
        "and dequantizes them in forward()"
    )
"""

REFERENCE_SOLUTION = """\
import torch
import torch.nn.functional as F  # noqa: F811 - the grader runs the solution cells alone
from torch import nn


def quantize_int8_per_channel(w):
    \"\"\"Symmetric, one scale per output row: w ~= q * scale, q in [-127, 127].\"\"\"
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
    q = torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8)
    return q, scale.to(torch.float16)


def grouped(w, group_size):
    \"\"\"[out, groups, group_size]; a last, shorter group is padded with zeros (688 columns
    are 10 groups of 64 and one of 48).\"\"\"
    pad = -w.shape[1] % group_size
    return F.pad(w, (0, pad)).reshape(w.shape[0], -1, group_size)


def int4_group_params(w, group_size):
    \"\"\"Asymmetric per group: w ~= (q - zero) * scale, q in [0, 15].\"\"\"
    groups = grouped(w, group_size)
    low = groups.amin(dim=2).clamp(max=0)
    high = groups.amax(dim=2).clamp(min=0)
    scale = ((high - low) / 15).clamp(min=1e-8)
    zero = torch.clamp(torch.round(-low / scale), 0, 15)
    return scale, zero


def quantize_int4_groups(w, scale, zero, group_size):
    groups = grouped(w, group_size)
    q = torch.clamp(torch.round(groups / scale[..., None]) + zero[..., None], 0, 15)
    return q.reshape(w.shape[0], -1)[:, : w.shape[1]].to(torch.uint8)


def pack_int4(q):
    \"\"\"Two 4-bit values per byte: even columns in the low nibble, odd ones in the high.\"\"\"
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_int4(packed):
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)


class QuantLinear(nn.Module):
    \"\"\"A Linear whose weight is stored as integers and dequantized at every call.\"\"\"

    def __init__(self, *, bits, qweight, scale, zero=None, group_size=None, bias=None):
        super().__init__()
        self.bits, self.group_size = bits, group_size
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("zero", zero)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def weight_for(self, dtype):
        if self.bits == 8:
            return (self.qweight.to(dtype) * self.scale.to(dtype))
        q = unpack_int4(self.qweight).to(dtype)
        out, cols = q.shape
        q = grouped(q, self.group_size)
        w = (q - self.zero.to(dtype)[..., None]) * self.scale.to(dtype)[..., None]
        return w.reshape(out, -1)[:, :cols]

    def forward(self, x):
        return F.linear(x, self.weight_for(x.dtype), self.bias)


def int8_linear(linear):
    q, scale = quantize_int8_per_channel(linear.weight.detach().float())
    return QuantLinear(bits=8, qweight=q, scale=scale, bias=linear.bias)


def int4_linear(linear, group_size, w=None, scale=None, zero=None, q=None):
    if q is None:
        w = linear.weight.detach().float()
        scale, zero = int4_group_params(w, group_size)
        q = quantize_int4_groups(w, scale, zero, group_size)
    return QuantLinear(bits=4, qweight=pack_int4(q), scale=scale.to(torch.float16),
                       zero=zero.to(torch.uint8), group_size=group_size, bias=linear.bias)


def gptq_linear(linear, hessian, group_size, damp=0.01):
    \"\"\"GPTQ (Frantar et al. 2022): quantize one column at a time and push each column's
    rounding error onto the columns not yet quantized, weighted by the inverse Hessian.\"\"\"
    W = linear.weight.detach().float().clone()
    H = hessian.clone()
    out, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.diag(H).mean() * torch.eye(cols, device=H.device)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros(out, cols, dtype=torch.uint8, device=W.device)
    scales, zeros = [], []
    for i in range(cols):
        if i % group_size == 0:
            s, z = int4_group_params(W[:, i:i + group_size], group_size)
            scales.append(s[:, 0])
            zeros.append(z[:, 0])
        s, z = scales[-1], zeros[-1]
        w = W[:, i]
        q = torch.clamp(torch.round(w / s) + z, 0, 15)
        Q[:, i] = q.to(torch.uint8)
        err = (w - (q - z) * s) / U[i, i]
        W[:, i + 1:] -= err[:, None] * U[i, i + 1:][None, :]
    scale, zero = torch.stack(scales, 1), torch.stack(zeros, 1)
    return int4_linear(linear, group_size, scale=scale, zero=zero, q=Q)


def input_hessians(model, calibration):
    \"\"\"H = 2/n * sum x x^T of every Linear's inputs over the calibration tokens.\"\"\"
    sums, counts, hooks = {}, {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":
            def hook(mod, args, out, name=name):
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                sums[name] = sums.get(name, 0) + 2 * x.T @ x
                counts[name] = counts.get(name, 0) + x.shape[0]
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, len(calibration), 4):
                model(calibration[i:i + 4])
    finally:
        for h in hooks:
            h.remove()
    return {name: sums[name] / counts[name] for name in sums}


def replace_linears(model, make):
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and full != "lm_head":
                setattr(module, child_name, make(full, child))
    return model


class TinyGemmInt4Linear(nn.Module):
    \"\"\"INT4 on a CUDA GPU through torch's tinygemm kernel (aten._weight_int4pack_mm), which
    unpacks the nibbles inside the matmul: the weights cross memory as 4 bits, where
    QuantLinear's dequantize-then-matmul writes and reads a bf16 copy (slower than bf16).
    Measured on an H100 at batch 1: 1.9-2.1x bf16 per layer (bench/quant_kernels_probe.py).\"\"\"

    INNER_K_TILES = 8

    def __init__(self, layer):
        super().__init__()
        q = unpack_int4(layer.qweight)
        # tinygemm's layout: nibbles high-first, then its own tiling; w = (q - 8) * s + z_f, so
        # our (q - zero) * scale needs z_f = (8 - zero) * scale.
        packed = (q[:, 0::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous()
        self.register_buffer(
            "qweight", torch.ops.aten._convert_weight_to_int4pack(packed, self.INNER_K_TILES)
        )
        scale, zero = layer.scale.float(), layer.zero.float()
        pairs = torch.stack([scale, (8 - zero) * scale], dim=-1)  # [out, groups, 2]
        self.register_buffer(
            "scales_and_zeros", pairs.transpose(0, 1).contiguous().to(torch.bfloat16)
        )
        self.group_size = layer.group_size
        self.bias = layer.bias

    @staticmethod
    def fits(layer):
        out, inputs = layer.qweight.shape[0], layer.qweight.shape[1] * 2
        return (
            layer.bits == 4
            and layer.qweight.is_cuda
            and torch.cuda.get_device_capability(layer.qweight.device) >= (8, 0)
            and layer.group_size in (32, 64, 128, 256)
            and inputs % (TinyGemmInt4Linear.INNER_K_TILES * 16) == 0
            and inputs % layer.group_size == 0
            and out % 8 == 0
        )

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int4pack_mm(
            rows, self.qweight, self.group_size, self.scales_and_zeros
        )
        y = y.reshape(*x.shape[:-1], -1).to(x.dtype)
        return y if self.bias is None else y + self.bias


def with_fast_kernels(model):
    \"\"\"On CUDA, INT4 layers whose shapes tinygemm takes switch to it (688-wide inputs do not:
    they keep dequantizing). INT8 keeps QuantLinear everywhere: torch has no fast int8
    weight-only kernel on CUDA (docs/labs/quantization.md has the measurements).\"\"\"
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
        return model
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, QuantLinear) and TinyGemmInt4Linear.fits(child):
                setattr(module, child_name, TinyGemmInt4Linear(child))
    return model


@torch.no_grad()
def quantize(model, method, *, group_size=64, calibration=None):
    \"\"\"Replace every nn.Linear of the decoder layers by a QuantLinear; return the model.\"\"\"
    if method == "int8":
        return replace_linears(model, lambda name, lin: int8_linear(lin))
    if method == "int4":
        return with_fast_kernels(
            replace_linears(model, lambda name, lin: int4_linear(lin, group_size))
        )
    if method == "int4-calibrated":
        hessians = input_hessians(model, torch.as_tensor(calibration))
        return with_fast_kernels(
            replace_linears(model, lambda name, lin: gptq_linear(lin, hessians[name], group_size))
        )
    raise ValueError(f"unknown method {method!r}")
"""

CHECK_MD = """\
## 5. Check it here

This self-check does what the grader does, on a few held-out windows you can see: it quantizes
a fresh copy of the model with each method and compares with the bf16 model - real bytes,
perplexity, KL divergence and top-1 agreement. The grader uses secret windows and its own clean
process for the baseline; the bars below are the lab's (see the criteria on the lab page).
"""

CHECK_CODE = """\
documents = corpus.read_corpus()
tok = tokenization.load_tokenizer()
heldout = torch.tensor(tokenization.encode_documents(tok, corpus.texts(documents, "heldout")[:200]))
train = torch.tensor(tokenization.encode_documents(tok, corpus.texts(documents, "train")[:400]))
windows = torch.stack([heldout[i : i + 128] for i in range(0, 8 * 128, 128)])
calibration = torch.stack([train[i : i + 256] for i in range(0, 16 * 256, 256)])


def real_bytes(m):
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in [*m.parameters(), *m.buffers()]
    }
    return sum(storages.values())


@torch.no_grad()
def log_probs(m):
    return F.log_softmax(m(windows).logits.float(), dim=-1)


full = load_model(dtype=torch.bfloat16)
ref = log_probs(full)
outside = real_bytes(full) - real_bytes(full.model.layers)
layers = real_bytes(full.model.layers)
targets = windows[:, 1:, None]
ref_nll = -ref[:, :-1].gather(-1, targets).mean()
bars = {"int8": (0.55, 1.0), "int4": (0.3, 5.0), "int4-calibrated": (0.3, 5.0)}
kls = {}
for method, (max_ratio, max_ppl) in bars.items():
    fresh = load_model(dtype=torch.bfloat16)
    quantized = quantize(fresh, method, group_size=64, calibration=calibration)
    lp = log_probs(quantized)
    ratio = (real_bytes(quantized) - outside) / layers
    ppl = (math.exp(-lp[:, :-1].gather(-1, targets).mean() + ref_nll) - 1) * 100
    kls[method] = (ref.exp() * (ref - lp)).sum(-1).mean().item()
    top1 = (ref.argmax(-1) == lp.argmax(-1)).float().mean().item()
    print(
        f"{method:16s} bytes {ratio:.3f}x (<= {max_ratio})  "
        f"perplexity {ppl:+.2f}% (<= {max_ppl}%)"
        f"  KL {kls[method]:.4f}  top-1 {top1:.3f}"
    )
    if ratio > max_ratio:
        print("   too many bytes: are 4-bit values packed two per byte, and the nn.Linear gone?")
ratio = kls["int4-calibrated"] / kls["int4"]
print(f"calibrated KL / plain INT4 KL = {ratio:.2f} (the grader wants <= 0.9)")
"""

SUBMIT_MD = """\
## Submit

Save the notebook and upload it on the lab page (or with the CLI). The grader runs every cell,
then loads **only the cells tagged `solution`** into a sandboxed process, loads the committed
bf16 model there and calls your `quantize` on it for each method. In another clean process it
loads the same model and measures the full-precision baseline and its own plain INT4. Then:

- **bytes**: real bytes of every tensor your model holds and every tensor left alive in its
  process, minus the bf16 embedding, over the decoder layers' bf16 bytes: INT8 <= 0.55x, INT4
  and calibrated <= 0.3x;
- **quality** on held-out windows drawn from a secret seed: perplexity increase (INT8 <= 1%,
  INT4 and calibrated <= 5%), mean KL divergence (INT8 <= 0.002, INT4 <= 0.03), and your
  calibrated method's KL at most 0.9x the grader's plain INT4;
- **speed**: prefill time and decode tokens/s at batch 1 and a larger batch, reported on every
  worker, on random weights of Llama-2-7B shapes on GPU nodes. There each decode step is
  also replayed from a CUDA graph, so the GPU's time is measured and not Python's launching
  of kernels, and your INT4 model must decode at least 1.3x faster than bf16 at batch 1.
  Torch's tinygemm INT4 kernel (`torch.ops.aten._weight_int4pack_mm`, which reads packed
  nibbles inside the matmul) gets there; dequantizing whole weights before the matmul does
  not. Keep your layer's forward free of host round trips (`.item()`, `.cpu()`): they cannot
  be captured. INT8 speed is shown, not graded: torch has no fast int8 weight-only matmul on
  CUDA (its `_weight_int8pack_mm` measured 0.1-0.5x bf16 on an H100). CPU workers show the
  eager figures and grade no speed.

A method that raises, changes the model's shape, returns NaN or reads the weight files again
fails its criteria with the reason; the others are still graded.
"""


def build(solution: str, *, extra: list | None = None):
    """The starter notebook with `solution` as its solution cell; extra cells are learner
    cells."""
    cells = [
        new_markdown_cell(INTRO, id="intro"),
        new_code_cell(SETUP_CODE, id="setup", metadata=dict(LOCKED)),
        new_markdown_cell(BASICS_MD, id="basics-md"),
        new_code_cell(BASICS_CODE, id="basics", metadata=dict(LOCKED)),
        new_markdown_cell(PACKING_MD, id="packing-md"),
        new_code_cell(PACKING_CODE, id="packing", metadata=dict(LOCKED)),
        new_markdown_cell(GPTQ_MD, id="gptq-md"),
        new_code_cell(GPTQ_CODE, id="gptq", metadata=dict(LOCKED)),
        new_markdown_cell(TORCHAO_MD, id="torchao-md"),
        new_code_cell(TORCHAO_CODE, id="torchao", metadata=dict(LOCKED)),
        new_markdown_cell(TASK_MD, id="task-md"),
        new_code_cell(solution, id="solution", metadata={"tags": ["solution"]}),
        new_markdown_cell(CHECK_MD, id="check-md"),
        new_code_cell(CHECK_CODE, id="self-check", metadata=dict(LOCKED)),
        new_markdown_cell(SUBMIT_MD, id="submit-md"),
        *(extra or []),
    ]
    return notebook(cells)


# Known wrong: 4-bit values stored one per byte. Quality as the reference; fails int4_bytes and
# calibrated_bytes (0.52x).
UNPACKED = REFERENCE_SOLUTION.replace(
    """    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()""",
    """    return q.contiguous()  # one value per byte: not packed""",
).replace(
    """    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)""",
    """    return packed""",
)

# Known wrong: one scale and zero for the whole tensor at 4 bits. Fails INT4 quality.
PER_TENSOR = REFERENCE_SOLUTION.replace(
    """    low = groups.amin(dim=2).clamp(max=0)
    high = groups.amax(dim=2).clamp(min=0)""",
    """    low = groups.amin().clamp(max=0).expand(groups.shape[:2])  # one scale per tensor
    high = groups.amax().clamp(min=0).expand(groups.shape[:2])""",
)

# Cheat: quantize properly, but keep the full-precision weight as a plain attribute (not a
# parameter or buffer) and compute with it. Perfect quality; the grader counts the hidden
# tensor, so every bytes criterion fails.
HIDDEN_COPY = (
    REFERENCE_SOLUTION.replace(
        """    def forward(self, x):
        return F.linear(x, self.weight_for(x.dtype), self.bias)""",
        """    def forward(self, x):
        return F.linear(x, self.shadow.to(x.dtype), self.bias)""",
    )
    .replace(
        """def int8_linear(linear):
    q, scale = quantize_int8_per_channel(linear.weight.detach().float())
    return QuantLinear(bits=8, qweight=q, scale=scale, bias=linear.bias)""",
        """def int8_linear(linear):
    q, scale = quantize_int8_per_channel(linear.weight.detach().float())
    module = QuantLinear(bits=8, qweight=q, scale=scale, bias=linear.bias)
    module.shadow = linear.weight.detach()  # hidden: not a parameter, not a buffer
    return module""",
    )
    .replace(
        """    return QuantLinear(bits=4, qweight=pack_int4(q), scale=scale.to(torch.float16),""",
        """    module = QuantLinear(bits=4, qweight=pack_int4(q), scale=scale.to(torch.float16),""",
    )
    .replace(
        "zero=zero.to(torch.uint8), group_size=group_size, bias=linear.bias)",
        """zero=zero.to(torch.uint8), group_size=group_size, bias=linear.bias)
    module.shadow = linear.weight.detach()  # hidden: not a parameter, not a buffer
    return module""",
    )
)

# Cheat: the same, the full-precision weights in a module-level dict instead. Caught by the
# scan of every tensor alive in the process.
MODULE_CACHE = (
    HIDDEN_COPY.replace("module.shadow = ", "_CACHE[id(module)] = ")
    .replace("self.shadow.to(x.dtype)", "_CACHE[id(self)].to(x.dtype)")
    .replace("import torch\n", "import torch\n\n_CACHE = {}\n", 1)
)


def fixtures() -> dict[str, object]:
    for variant in (UNPACKED, PER_TENSOR, HIDDEN_COPY, MODULE_CACHE):
        assert variant != REFERENCE_SOLUTION
    assert HIDDEN_COPY.count("shadow") == 3 and MODULE_CACHE.count("_CACHE") == 4
    return {
        "unpacked_int4.ipynb": build(UNPACKED),
        "per_tensor_int4.ipynb": build(PER_TENSOR),
        "hidden_copy.ipynb": build(HIDDEN_COPY),
        "module_cache.ipynb": build(MODULE_CACHE),
    }


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    nbformat.write(build(STARTER_SOLUTION), HERE / "quantization.ipynb")
    nbformat.write(build(REFERENCE_SOLUTION), HERE / "reference.ipynb")
    for name, nb in fixtures().items():
        nbformat.write(nb, FIXTURES / name)
    print(f"wrote {HERE / 'quantization.ipynb'}, reference.ipynb and {len(fixtures())} fixtures")


if __name__ == "__main__":
    main()
