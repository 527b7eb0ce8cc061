"""The quantization lab's numbers, computed in the worker from what the children returned:
quality from two arrays of log-probs (the clean child's full-precision model and a quantized
one, on the same windows), and bytes from the counts the adapter took.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def quality(reference: np.ndarray, candidate: np.ndarray, windows: np.ndarray) -> dict[str, float]:
    """Perplexity of both on the next tokens, the relative increase (%), mean KL(reference ||
    candidate) over every position's next-token distribution, and top-1 agreement."""
    targets = windows[:, 1:, None]
    ref_nll = -np.take_along_axis(reference[:, :-1], targets, axis=-1).mean()
    cand_nll = -np.take_along_axis(candidate[:, :-1], targets, axis=-1).mean()
    kl = (np.exp(reference) * (reference - candidate)).sum(-1).mean()
    agree = (reference.argmax(-1) == candidate.argmax(-1)).mean()
    return {
        "perplexity": float(math.exp(cand_nll)),
        "baseline_perplexity": float(math.exp(ref_nll)),
        "perplexity_increase_pct": float((math.exp(cand_nll - ref_nll) - 1) * 100),
        "kl": float(max(kl, 0.0)),
        "top1_agreement": float(agree),
    }


def counted_bytes(load: dict[str, Any], *, baseline: dict[str, Any]) -> dict[str, Any]:
    """The bytes a quantized model is charged for: the larger of its own tensors and every
    tensor alive in its process, less what a clean process holds besides its model. Ratio =
    (charged - the full-precision bytes outside the decoder layers) / the decoder layers'
    full-precision bytes: the lab quantizes the layers' Linear weights, and may leave the tied
    embedding as it is."""
    overhead = max(0, baseline["process_tensor_bytes"] - baseline["model_bytes"])
    outside_model = max(0, load["process_tensor_bytes"] - overhead - load["model_bytes"])
    charged = load["model_bytes"] + outside_model
    ratio = (charged - baseline["outside_layers_bytes"]) / baseline["layer_bytes"]
    return {
        "model_bytes": load["model_bytes"],
        "outside_model_bytes": outside_model,
        "charged_bytes": charged,
        "ratio": round(ratio, 4),
    }
