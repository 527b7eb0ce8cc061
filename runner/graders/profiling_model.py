"""The model the `profiling` lab's learners profile: a small stack of pre-norm transformer
blocks (Llama-like: RMSNorm, causal self-attention with a preallocated KV cache, a GELU MLP,
tied embedding and LM head), with one deliberately slow leaf module.

Which leaf is slow, and why, comes from a ModelConfig that runner.graders.profiling_lab draws
from the secret seed. The slow leaf is an instance of the same class as its siblings, with the
same attribute names; only the function it computes with differs. Nothing on the model names
the bottleneck or its cause (no config object, no seed, no "slow" attribute): the learner has
to find it by measuring. Python code in the same process could still read the functions' code;
docs/labs/profiling.md, "Known limits", says what that leaves open.

Imported inside the sandboxed children (runner.graders.profiling_adapter) and by tests; torch
is imported lazily so that the worker process, which only draws configs, never needs it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# Why a leaf module is slow. "host_sync" exists only where there is a device to wait for.
CAUSES = ("unfused", "shape", "host_sync")
# Leaf sites (relative to a block) where each cause can be planted.
SITES = {
    "unfused": ("attn.core", "mlp.act", "norm2"),
    "shape": ("attn.qkv", "mlp.up", "mlp.down"),
    "host_sync": ("attn.core", "mlp.act", "norm1"),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the model and its inputs, and nothing the learner sees."""

    layers: int
    d_model: int
    heads: int
    ffn: int
    vocab: int
    batch: int
    seq: int
    cache_len: int
    dtype: str  # "float32" on CPU, "bfloat16" on GPU
    slow_block: int
    slow_site: str  # one of SITES[cause]
    cause: str
    chunk_rows: int  # how many rows the slow leaf handles per step of its loop
    input_seed: int

    @property
    def slow_module(self) -> str:
        """The slow leaf's qualified name, as model.named_modules() gives it."""
        return f"blocks.{self.slow_block}.{self.slow_site}"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def parameter_bytes(self) -> int:
        """Parameters counted once (the LM head shares the embedding's weight)."""
        per_block = (
            2 * self.d_model  # two RMSNorm weights
            + self.d_model * 3 * self.d_model  # qkv, no bias
            + self.d_model * self.d_model  # out, no bias
            + self.d_model * self.ffn
            + self.ffn  # up, with bias
            + self.ffn * self.d_model
            + self.d_model  # down, with bias
        )
        total = self.vocab * self.d_model + self.layers * per_block + self.d_model
        return total * self.element_size

    def kv_cache_bytes(self) -> int:
        """Keys and values for every layer: (batch, cache_len, heads, head_dim) each."""
        per_tensor = self.batch * self.cache_len * self.heads * self.head_dim
        return 2 * self.layers * per_tensor * self.element_size

    @property
    def element_size(self) -> int:
        return {"float32": 4, "bfloat16": 2, "float16": 2}[self.dtype]


# --- What each leaf computes: the fast function, or the slow one the config plants ---------
#
# Every function of one role has the same __name__ and __qualname__ (set by _as), so a leaf's
# attributes look the same whichever it got.


def _as(name: str):
    def rename(function):
        function.__name__ = function.__qualname__ = name
        return function

    return rename


@_as("linear")
def _linear(x, weight, bias, chunk_rows):
    import torch.nn.functional as F

    return F.linear(x, weight, bias)


@_as("linear")
def _linear_row_by_row(x, weight, bias, chunk_rows):
    # A bad shape: a [chunk_rows, d] x [d, n] product per step (a matrix-vector product when
    # chunk_rows is 1) instead of one [tokens, d] x [d, n] matmul, so the weight is read again
    # for every few rows and the GEMM never gets the reuse that makes it fast.
    import torch
    import torch.nn.functional as F

    rows = x.reshape(-1, x.shape[-1])
    out = torch.cat([F.linear(part, weight, bias) for part in rows.split(chunk_rows)])
    return out.reshape(*x.shape[:-1], weight.shape[0])


@_as("activation")
def _gelu(x, chunk_rows):
    import torch.nn.functional as F

    return F.gelu(x, approximate="tanh")


@_as("activation")
def _gelu_unfused(x, chunk_rows):
    # The same tanh-approximate GELU written as eight separate element-wise operations, applied
    # to a few rows at a time: every operation reads and writes its whole operand again.
    import torch

    rows = x.reshape(-1, x.shape[-1])
    parts = []
    for part in rows.split(chunk_rows):
        cube = part * part * part
        inner = (part + 0.044715 * cube) * math.sqrt(2.0 / math.pi)
        parts.append(0.5 * part * (1.0 + torch.tanh(inner)))
    return torch.cat(parts).reshape(x.shape)


@_as("activation")
def _gelu_checked(x, chunk_rows):
    # A host synchronisation: a finiteness check per few rows whose answer Python needs
    # (.item()), so the CPU waits for the device to finish everything queued before it.
    import torch
    import torch.nn.functional as F

    for part in x.reshape(-1, x.shape[-1]).split(chunk_rows):
        if not bool(torch.isfinite(part).all().item()):
            raise FloatingPointError("non-finite activation")
    return F.gelu(x, approximate="tanh")


@_as("rms_norm")
def _rms_norm(x, weight, eps, chunk_rows):
    import torch

    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@_as("rms_norm")
def _rms_norm_unfused(x, weight, eps, chunk_rows):
    # RMSNorm one few-row slice at a time, each in five separate element-wise operations.
    import torch

    rows = x.reshape(-1, x.shape[-1])
    parts = []
    for part in rows.split(chunk_rows):
        square = part * part
        mean = square.mean(-1, keepdim=True)
        inv = torch.rsqrt(mean + eps)
        parts.append(part * inv * weight)
    return torch.cat(parts).reshape(x.shape)


@_as("rms_norm")
def _rms_norm_checked(x, weight, eps, chunk_rows):
    # A host synchronisation per few rows (see _gelu_checked).
    import torch

    for part in x.reshape(-1, x.shape[-1]).split(chunk_rows):
        if not bool(torch.isfinite(part).all().item()):
            raise FloatingPointError("non-finite activation")
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@_as("attend")
def _attend(q, k, v, chunk_rows):
    # q, k, v: (batch, heads, seq, head_dim). One fused kernel (FlashAttention on a GPU).
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@_as("attend")
def _attend_unfused(q, k, v, chunk_rows):
    # Attention one (sequence, head, block of query rows) at a time, with the softmax written
    # out: scores, scale, causal mask, max, subtract, exp, sum, divide, weighted sum - each its
    # own kernel, the score matrix written to memory and read back again by every step.
    import torch

    batch, heads, seq, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim)
    mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1)
    out = torch.empty_like(q)
    for b in range(batch):
        for h in range(heads):
            for start in range(0, seq, chunk_rows):
                rows = slice(start, start + chunk_rows)
                scores = q[b, h, rows] @ k[b, h].transpose(0, 1)
                scores = scores * scale
                scores = scores.masked_fill(mask[rows], float("-inf"))
                shifted = scores - scores.amax(-1, keepdim=True)
                weights = shifted.exp()
                weights = weights / weights.sum(-1, keepdim=True)
                out[b, h, rows] = weights @ v[b, h]
    return out


@_as("attend")
def _attend_checked(q, k, v, chunk_rows):
    # A host synchronisation per few query rows of every sequence (see _gelu_checked).
    import torch
    import torch.nn.functional as F

    for b in range(q.shape[0]):
        for part in q[b].transpose(0, 1).split(chunk_rows):
            if not bool(torch.isfinite(part).all().item()):
                raise FloatingPointError("non-finite query")
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def build_model(config: ModelConfig, *, device: str) -> Any:
    """The model on `device`, in eval mode, parameters frozen, KV cache zeroed; deterministic
    for a config (its weights come from config.input_seed)."""
    import torch

    stack = _classes()["TransformerStack"]
    torch.manual_seed(config.input_seed)
    with torch.device(device):  # built in place: ~1 GB of float32 never passes through the host
        model = stack(config)
    model = model.to(dtype=getattr(torch, config.dtype)).eval().requires_grad_(False)
    for module in model.modules():
        if hasattr(module, "chunk_rows"):  # every leaf has one, so the slow leaf's is no clue
            module.chunk_rows = config.chunk_rows
    model.get_submodule(config.slow_module).compute = _planted(config.cause, config.slow_site)
    return model


def _planted(cause: str, site: str) -> Any:
    # A table local to this call, not a module global: the learner's code can reach this
    # module's globals through any leaf's `compute`, and a global table keyed by cause would
    # name the answer.
    return {
        ("unfused", "attn.core"): _attend_unfused,
        ("unfused", "mlp.act"): _gelu_unfused,
        ("unfused", "norm2"): _rms_norm_unfused,
        ("shape", "attn.qkv"): _linear_row_by_row,
        ("shape", "mlp.up"): _linear_row_by_row,
        ("shape", "mlp.down"): _linear_row_by_row,
        ("host_sync", "attn.core"): _attend_checked,
        ("host_sync", "mlp.act"): _gelu_checked,
        ("host_sync", "norm1"): _rms_norm_checked,
    }[(cause, site)]


def make_inputs(config: ModelConfig, *, device: str) -> Any:
    """Token ids of shape (batch, seq), from the config's own seed."""
    import torch

    generator = torch.Generator().manual_seed(config.input_seed + 1)
    ids = torch.randint(0, config.vocab, (config.batch, config.seq), generator=generator)
    return ids.to(device)


_CLASSES: dict[str, Any] = {}


def _classes() -> dict[str, Any]:
    """The module classes, defined on first use so that importing this file needs no torch."""
    if _CLASSES:
        return _CLASSES
    import torch
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, width: int, eps: float = 1e-6) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(width))
            self.eps = eps
            self.chunk_rows = 1
            self.compute = _rms_norm

        def forward(self, x):
            return self.compute(x, self.weight, self.eps, self.chunk_rows)

    class Linear(nn.Linear):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.chunk_rows = 1
            self.compute = _linear

        def forward(self, x):
            return self.compute(x, self.weight, self.bias, self.chunk_rows)

    class Activation(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.chunk_rows = 1
            self.compute = _gelu

        def forward(self, x):
            return self.compute(x, self.chunk_rows)

    class AttentionCore(nn.Module):
        """Writes this step's keys and values into the preallocated cache, then attends over
        the cached prefix (a prefill: the whole prompt at once)."""

        def __init__(self, config: ModelConfig) -> None:
            super().__init__()
            shape = (config.batch, config.cache_len, config.heads, config.head_dim)
            self.register_buffer("k_cache", torch.zeros(shape))
            self.register_buffer("v_cache", torch.zeros(shape))
            self.chunk_rows = 1
            self.compute = _attend

        def forward(self, q, k, v):
            batch, seq = q.shape[:2]
            self.k_cache[:batch, :seq].copy_(k)
            self.v_cache[:batch, :seq].copy_(v)
            keys = self.k_cache[:batch, :seq].transpose(1, 2)
            values = self.v_cache[:batch, :seq].transpose(1, 2)
            out = self.compute(q.transpose(1, 2), keys, values, self.chunk_rows)
            return out.transpose(1, 2)

    class Attention(nn.Module):
        def __init__(self, config: ModelConfig) -> None:
            super().__init__()
            self.heads, self.head_dim = config.heads, config.head_dim
            self.qkv = Linear(config.d_model, 3 * config.d_model, bias=False)
            self.core = AttentionCore(config)
            self.out = Linear(config.d_model, config.d_model, bias=False)

        def forward(self, x):
            batch, seq, width = x.shape
            q, k, v = self.qkv(x).split(width, dim=-1)
            shape = (batch, seq, self.heads, self.head_dim)
            attended = self.core(q.reshape(shape), k.reshape(shape), v.reshape(shape))
            return self.out(attended.reshape(batch, seq, width))

    class Mlp(nn.Module):
        def __init__(self, config: ModelConfig) -> None:
            super().__init__()
            self.up = Linear(config.d_model, config.ffn)
            self.act = Activation()
            self.down = Linear(config.ffn, config.d_model)

        def forward(self, x):
            return self.down(self.act(self.up(x)))

    class Block(nn.Module):
        def __init__(self, config: ModelConfig) -> None:
            super().__init__()
            self.norm1 = RMSNorm(config.d_model)
            self.attn = Attention(config)
            self.norm2 = RMSNorm(config.d_model)
            self.mlp = Mlp(config)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class TransformerStack(nn.Module):
        def __init__(self, config: ModelConfig) -> None:
            super().__init__()
            self.embed = nn.Embedding(config.vocab, config.d_model)
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
            self.norm = RMSNorm(config.d_model)
            self.lm_head = Linear(config.d_model, config.vocab, bias=False)
            self.lm_head.weight = self.embed.weight  # tied, as in many LLMs: counted once
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
            nn.init.normal_(self.embed.weight, std=0.02)

        def forward(self, input_ids):
            x = self.embed(input_ids)
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.norm(x))

    for cls in (RMSNorm, Linear, Activation, AttentionCore, Attention, Mlp, Block):
        cls.__module__ = "model"
    TransformerStack.__module__ = "model"
    _CLASSES.update(
        {cls.__name__: cls for cls in (RMSNorm, Linear, Activation, AttentionCore)}
        | {"TransformerStack": TransformerStack}
    )
    return _CLASSES
