"""Which launch settings get the kernels lab's reference (fused residual-add + RMSNorm, one
program per row) closest to the copy roofline on this GPU.

Times each variant with `triton.testing.do_bench` (L2 cleared before every call) at the lab's
graded shape, 4096 x 4096 float32, and prints its % of the copy bandwidth measured the same way
(a 1 GiB device-to-device copy, bytes read + written). The reference notebook's settings are
chosen from this table; docs/labs/kernels.md records the run.

    python bench/kernels_variants.py [--rows 4096 --hidden 4096]
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import triton
import triton.language as tl
from triton.testing import do_bench


@triton.jit
def _kernel(
    x_ptr, r_ptr, w_ptr, out_ptr, rows, hidden, eps,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, EVICT: tl.constexpr,
):  # fmt: skip
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    w = tl.load(w_ptr + cols, mask=mask, other=0.0, eviction_policy="evict_last")
    for i in range(ROWS):
        row = (tl.program_id(0) * ROWS + i).to(tl.int64)
        if row < rows:
            offsets = row * hidden + cols
            if EVICT:
                x = tl.load(x_ptr + offsets, mask=mask, other=0.0, eviction_policy="evict_first")
                r = tl.load(r_ptr + offsets, mask=mask, other=0.0, eviction_policy="evict_first")
            else:
                x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
                r = tl.load(r_ptr + offsets, mask=mask, other=0.0)
            h = x + r
            inv_rms = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / hidden + eps)
            tl.store(out_ptr + offsets, h * inv_rms * w, mask=mask)


def run(x, r, w, *, warps: int, rows_per_program: int, evict: bool) -> torch.Tensor:
    rows, hidden = x.shape
    out = torch.empty_like(x)
    grid = (triton.cdiv(rows, rows_per_program),)
    _kernel[grid](
        x, r, w, out, rows, hidden, 1e-6,
        BLOCK=triton.next_power_of_2(hidden), ROWS=rows_per_program, EVICT=evict,
        num_warps=warps,
    )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=4096)
    args = parser.parse_args()
    x, r = (torch.randn(args.rows, args.hidden, device="cuda") for _ in range(2))
    w = torch.rand(args.hidden, device="cuda")
    h = x.double() + r.double()
    want = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()).float()

    src = torch.empty(1 << 28, device="cuda")  # 1 GiB of float32
    dst = torch.empty_like(src)
    copy_us = do_bench(lambda: dst.copy_(src), warmup=100, rep=500) * 1e3
    copy_bw = 2 * src.numel() * 4 / (copy_us * 1e-6)
    moved = 3 * x.numel() * 4
    naive_us = (
        do_bench(lambda: (x + r) * torch.rsqrt((x + r).pow(2).mean(-1, keepdim=True) + 1e-6) * w)
        * 1e3
    )
    print(
        f"{torch.cuda.get_device_name()}: copy {copy_bw / 1e12:.3f} TB/s; naive {naive_us:.1f} us"
    )
    rows = []
    for warps, per, evict in itertools.product((4, 8, 16, 32), (1, 2, 4), (False, True)):
        got = run(x, r, w, warps=warps, rows_per_program=per, evict=evict)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        settings = {"warps": warps, "rows_per_program": per, "evict": evict}
        us = do_bench(lambda settings=settings: run(x, r, w, **settings)) * 1e3
        percent = 100 * moved / (us * 1e-6) / copy_bw
        rows.append({"warps": warps, "rows_per_program": per, "evict": evict, "us": round(us, 2),
                     "percent_of_copy": round(percent, 1)})  # fmt: skip
        print(f"warps {warps:2d} rows/program {per} evict {evict!s:5s}: {us:7.2f} us "
              f"{percent:5.1f}% of copy, {naive_us / us:.2f}x naive")  # fmt: skip
    best = max(rows, key=lambda row: row["percent_of_copy"])
    print("best:", json.dumps(best))


if __name__ == "__main__":
    main()
