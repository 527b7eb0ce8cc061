"""The grader's own quantizer, served in the clean child: "none" leaves the model as it is
(the full-precision baseline), "int4" is plain round-to-nearest, asymmetric, group-wise - the
method a calibrated one must beat. It only simulates the rounding (weights stay bf16): the
grader needs its quality, not its bytes.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def round_to_nearest_int4(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """w -> (q - zero) * scale with q in [0, 15], one scale and zero per `group_size`
    inputs of each output row (a last, shorter group padded with zeros)."""
    rows, cols = weight.shape
    w = torch.nn.functional.pad(weight.float(), (0, -cols % group_size))
    groups = w.reshape(rows, -1, group_size)
    low = groups.amin(dim=2, keepdim=True).clamp(max=0)
    high = groups.amax(dim=2, keepdim=True).clamp(min=0)
    scale = ((high - low) / 15).clamp(min=1e-8)
    zero = torch.round(-low / scale).clamp(0, 15)
    q = (torch.round(groups / scale) + zero).clamp(0, 15)
    return ((q - zero) * scale).reshape(rows, -1)[:, :cols].to(weight.dtype)


@torch.no_grad()
def quantize(model: nn.Module, method: str, *, group_size: int, calibration=None) -> nn.Module:
    if method == "none":
        return model
    if method != "int4":
        raise ValueError(f"the grader's quantizer has no method {method!r}")
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":
            module.weight.copy_(round_to_nearest_int4(module.weight, group_size))
    return model
