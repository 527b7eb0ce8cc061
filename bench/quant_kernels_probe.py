"""Which low-bit matmul kernels this torch build has on this GPU, whether they agree with a
plain dequantize-then-matmul, and how fast they are on Llama-2-7B layer shapes.

    python bench/quant_kernels_probe.py [--out DIR]

Decides what the quantization lab's reference solution uses on GPU nodes
(docs/labs/quantization.md records the run). Candidates, per shape (in -> out features) and
batch M:
- bf16       F.linear on bf16 weights (the baseline)
- int8-deq   int8 weights dequantized to bf16, then F.linear (what a first attempt does)
- int8-mm    torch._weight_int8pack_mm (int8 weights, per-row scales, read inside the kernel)
- int8-compiled  torch.compile of F.linear(x, q.to(bf16)) * scale (gpt-fast's way)
- int4-deq   packed 4-bit weights unpacked and dequantized, then F.linear
- int4-mm    torch._weight_int4pack_mm (tinygemm layout, group-wise scale and zero)
Times are medians of CUDA-event timings over 200 calls after warm-up, L2 not flushed
(a decode step reads each weight once, so the weights, 8-90 MB, do not fit L2 anyway).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # q/k/v/o, gate/up, down
BATCHES = [1, 32]
GROUP = 64


def timed(fn, reps: int = 200) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


@torch.compile(dynamic=False)
def int8_compiled(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """gpt-fast's int8 weight-only linear: inductor fuses the int8 -> bf16 conversion into the
    matmul's loads when M is small, so the weights are read once, as int8."""
    return F.linear(x, q.to(x.dtype)) * scale


try:
    import triton
    import triton.language as tl
except ImportError:  # the probe still runs the torch candidates
    triton = None

if triton is not None:

    @triton.jit
    def _int8_mm_kernel(
        x_ptr,
        w_ptr,
        s_ptr,
        y_ptr,
        M,
        N,
        K,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """y[M, N] = x[M, K] @ (w[N, K] int8 * s[N]).T, the int8 tile converted in registers:
        the weights cross HBM once, as one byte each."""
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            kk = k + rk
            x = tl.load(
                x_ptr + rm[:, None] * K + kk[None, :],
                mask=(rm[:, None] < M) & (kk[None, :] < K),
                other=0.0,
            )
            w = tl.load(
                w_ptr + rn[None, :] * K + kk[:, None],
                mask=(rn[None, :] < N) & (kk[:, None] < K),
                other=0,
            )
            acc += tl.dot(x, w.to(tl.bfloat16))
        scale = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        acc = acc * scale[None, :]
        tl.store(
            y_ptr + rm[:, None] * N + rn[None, :],
            acc.to(tl.bfloat16),
            mask=(rm[:, None] < M) & (rn[None, :] < N),
        )


def int8_triton(x, q, scale, block_n, block_k, warps):
    m, k = x.shape
    n = q.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=torch.bfloat16)
    block_m = 16 if m <= 16 else 32
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _int8_mm_kernel[grid](
        x, q, scale, y, m, n, k, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps
    )
    return y


TRITON_CONFIGS = [
    (16, 256, 4),
    (32, 256, 4),
    (32, 128, 4),
    (64, 128, 4),
    (64, 256, 8),
    (128, 128, 8),
]


def int8_params(w: torch.Tensor):
    scale = w.float().abs().amax(dim=1).clamp(min=1e-8) / 127
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def int4_params(w: torch.Tensor, group: int):
    out, cols = w.shape
    g = w.float().reshape(out, cols // group, group)
    low, high = g.amin(-1), g.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-8)
    zero = torch.round(-low / scale).clamp(0, 15)
    q = torch.round(g / scale[..., None] + zero[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(out, cols), scale, zero


def tinygemm(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, inner_k_tiles: int = 8):
    """Our asymmetric (q - z) * s in tinygemm's layout: w = (q - 8) * s + zf, so zf = (8 - z) * s;
    nibbles packed high-first into uint8 [out, in / 2]."""
    packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    weight = torch.ops.aten._convert_weight_to_int4pack(packed.contiguous(), inner_k_tiles)
    zero_f = (8 - zero) * scale
    scales_and_zeros = (
        torch.stack([scale, zero_f], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    )
    return weight, scales_and_zeros


def measure_case(w: torch.Tensor, m: int) -> dict:
    out, cols = w.shape
    device = w.device
    q8, s8 = int8_params(w)
    s8b = s8.to(torch.bfloat16)
    q4, s4, z4 = int4_params(w, GROUP)
    w4 = ((q4.float().reshape(out, -1, GROUP) - z4[..., None]) * s4[..., None]).reshape(out, cols)
    x = torch.randn(m, cols, device=device, dtype=torch.bfloat16)
    want8 = F.linear(x, (q8.float() * s8[:, None]).to(torch.bfloat16)).float()
    want4 = F.linear(x, w4.to(torch.bfloat16)).float()
    row = {"in": cols, "out": out, "m": m}
    row["bf16_us"] = timed(lambda x=x: F.linear(x, w))
    row["int8_deq_us"] = timed(lambda x=x: F.linear(x, q8.to(torch.bfloat16) * s8b[:, None]))
    try:
        got = torch.ops.aten._weight_int8pack_mm(x, q8, s8b).float()
        row["int8_mm_rel_err"] = float((got - want8).norm() / want8.norm())
        row["int8_mm_us"] = timed(lambda x=x: torch.ops.aten._weight_int8pack_mm(x, q8, s8b))
    except Exception as exc:  # noqa: BLE001 - report what this build lacks
        row["int8_mm_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    try:
        row["int8_compiled_us"] = timed(lambda x=x: int8_compiled(x, q8, s8b))
        got = int8_compiled(x, q8, s8b).float()
        row["int8_compiled_rel_err"] = float((got - want8).norm() / want8.norm())
    except Exception as exc:  # noqa: BLE001
        row["int8_compiled_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    if triton is not None:
        best = None
        for config in TRITON_CONFIGS:
            try:
                got = int8_triton(x, q8, s8b, *config).float()
                took = timed(lambda x=x, config=config: int8_triton(x, q8, s8b, *config))
            except Exception as exc:  # noqa: BLE001
                row["int8_triton_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            if best is None or took < best[0]:
                best = (took, config, float((got - want8).norm() / want8.norm()))
        if best:
            row["int8_triton_us"], row["int8_triton_config"], row["int8_triton_rel_err"] = best
    row["int4_deq_us"] = timed(
        lambda x=x: F.linear(
            x,
            (
                (q4.to(torch.bfloat16).reshape(out, -1, GROUP) - z4.to(torch.bfloat16)[..., None])
                * s4.to(torch.bfloat16)[..., None]
            ).reshape(out, cols),
        )
    )
    try:
        packed, sz = tinygemm(q4, s4, z4)
        got = torch.ops.aten._weight_int4pack_mm(x, packed, GROUP, sz).float()
        row["int4_mm_rel_err"] = float((got - want4).norm() / want4.norm())
        row["int4_mm_us"] = timed(
            lambda x=x: torch.ops.aten._weight_int4pack_mm(x, packed, GROUP, sz)
        )
        row["int4_packed_bytes"] = packed.numel() * packed.element_size()
    except Exception as exc:  # noqa: BLE001
        row["int4_mm_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    for key in list(row):
        if key.endswith("_us") and key != "bf16_us":
            row[key.replace("_us", "_speedup")] = round(row["bf16_us"] / row[key], 3)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    device = torch.device("cuda")
    rows = []
    env = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    print(json.dumps(env))
    for cols, out in SHAPES:
        w = (torch.randn(out, cols, device=device) * 0.02).to(torch.bfloat16)
        for m in BATCHES:
            row = measure_case(w, m)
            print(json.dumps(row))
            rows.append(row)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "quant_kernels_probe.json").write_text(
            json.dumps({**env, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
