"""The `profiling` lab's definition for its grader: the model configs the secret seed chooses
from, the options read from lab.toml, and the names the adapter and the grader share.

runner.graders.profiling grades with them; runner.graders.profiling_adapter builds the model
from a config inside the sandboxed children; runner.graders.profiling_model is the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.graders.profiling_model import CAUSES, SITES, ModelConfig
from runner.labspec import LabSpec

SOLUTION_ADAPTER = "runner.graders.profiling_adapter:profile_candidate"
TRUTH = "runner.graders.profiling_truth:measure"
TRUTH_ADAPTER = "runner.graders.profiling_adapter:measure_truth"
TRACE_NAME = "trace.json.gz"
TRACE_CONTENT_TYPE = "application/gzip"

# Causes each scale plants. On a CPU there is no device to wait for, so a host sync costs
# nothing worth finding: "host_sync" is planted on GPU nodes only (docs/labs/profiling.md).
CPU_CAUSES = ("unfused", "shape")
GPU_CAUSES = CAUSES
# On CPU an element-wise chain costs about what a matmul does, so only attention written op
# by op is slow enough to stand out; on a GPU every small kernel pays a launch, so all do.
CPU_SITES = {"unfused": ("attn.core",), "shape": SITES["shape"]}


@dataclass(frozen=True)
class Scale:
    """The shape of the model at one device class, and how coarse the slow leaf's loop is."""

    layers: tuple[int, ...]
    d_model: int
    heads: int
    ffn: int
    vocab: tuple[int, ...]
    batch: int
    seq: tuple[int, ...]
    cache_len: tuple[int, ...]
    dtype: str
    causes: tuple[str, ...]
    sites: dict[str, tuple[str, ...]]
    # Rows per step of the slow leaf's loop, per (cause, site); chosen so that the slow leaf
    # takes several times any other leaf's time (measurements in docs/labs/profiling.md).
    chunk_rows: dict[tuple[str, str], int]


# A forward takes ~30-60 ms on one core of the 2-core CI machine: the grader's 15 timed
# forwards and a learner's profile of a few take seconds.
CPU_SCALE = Scale(
    layers=(3, 4),
    d_model=256,
    heads=8,
    ffn=1024,
    vocab=(768, 1024),
    batch=2,
    seq=(96, 128),
    cache_len=(160, 192, 224, 256),
    dtype="float32",
    causes=CPU_CAUSES,
    sites=CPU_SITES,
    chunk_rows={
        ("unfused", "attn.core"): 32,
        ("shape", "attn.qkv"): 1,
        ("shape", "mlp.up"): 1,
        ("shape", "mlp.down"): 1,
    },
)
# Llama-like widths in bfloat16: ~270 MB of parameters, ~135-270 MB of KV cache. On a GPU the
# slow leaf's loop is bound by kernel launches and synchronisations (~5-30 us each), so a few
# hundred steps stand out against a forward of a few milliseconds.
# PROVISIONAL: not yet run on a GPU node (docs/labs/profiling.md).
GPU_SCALE = Scale(
    layers=(6, 8),
    d_model=1024,
    heads=16,
    ffn=4096,
    vocab=(16384, 32000),
    batch=4,
    seq=(384, 512),
    cache_len=(1024, 2048),
    dtype="bfloat16",
    causes=GPU_CAUSES,
    sites=dict(SITES),
    chunk_rows={
        ("unfused", "attn.core"): 512,
        ("unfused", "mlp.act"): 16,
        ("unfused", "norm2"): 16,
        ("shape", "attn.qkv"): 4,
        ("shape", "mlp.up"): 4,
        ("shape", "mlp.down"): 4,
        ("host_sync", "attn.core"): 16,
        ("host_sync", "mlp.act"): 16,
        ("host_sync", "norm1"): 16,
    },
)


def scale_for(device_class: str) -> Scale:
    return GPU_SCALE if device_class == "gpu" else CPU_SCALE


def draw_config(rng: np.random.Generator, device_class: str) -> ModelConfig:
    """The model a submission profiles: its sizes, and which leaf is slow and why."""
    scale = scale_for(device_class)

    def pick(options: tuple[Any, ...]) -> Any:
        return options[int(rng.integers(len(options)))]

    layers = pick(scale.layers)
    cause = pick(scale.causes)
    site = pick(scale.sites[cause])
    return ModelConfig(
        layers=layers,
        d_model=scale.d_model,
        heads=scale.heads,
        ffn=scale.ffn,
        vocab=pick(scale.vocab),
        batch=scale.batch,
        seq=pick(scale.seq),
        cache_len=pick(scale.cache_len),
        dtype=scale.dtype,
        slow_block=int(rng.integers(layers)),
        slow_site=site,
        cause=cause,
        chunk_rows=scale.chunk_rows[(cause, site)],
        input_seed=int(rng.integers(1 << 31)),
    )


@dataclass(frozen=True)
class Options:
    k: int
    load_timeout_s: float
    call_timeout_s: float
    threads: int
    truth_reps: int
    truth_warmup: int
    trace_max_bytes: int
    share_tolerance: float  # how far a listed module's true share may trail a left-out one's

    @classmethod
    def from_spec(cls, spec: LabSpec, device_class: str) -> Options:
        options = dict(spec.options)
        scale = dict(options.get("scale", {}).get(device_class, {}))
        return cls(
            k=int(options.get("k", 3)),
            load_timeout_s=float(options.get("load_timeout_s", 120)),
            call_timeout_s=float(scale.get("call_timeout_s", 180)),
            threads=int(scale.get("threads", 0)),
            truth_reps=int(scale.get("truth_reps", 15)),
            truth_warmup=int(scale.get("truth_warmup", 2)),
            trace_max_bytes=int(options.get("trace_max_bytes", 20_000_000)),
            share_tolerance=float(scale.get("top_k_share_tolerance", 0.03)),
        )
