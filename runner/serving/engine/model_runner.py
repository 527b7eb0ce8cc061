"""The serving engine's model math: a Hugging Face Llama run over a paged KV cache.

Each step the engine hands `PagedLlama.forward` one `StepInput` per scheduled sequence,
prefills and decodes mixed. The K and V of position p of a sequence live at slot
`p % block_size` of block `block_table[p // block_size]`: the layout of vLLM's PagedAttention,
which lets a block manager give a sequence any free blocks in any order.

    runner = PagedLlama(load_model(), num_blocks=256, block_size=16)
    logits = runner.forward([
        StepInput(token_ids=prompt_ids, start_position=0, block_table=[3, 7]),   # prefill
        StepInput(token_ids=[last_id], start_position=40, block_table=[0, 5, 9]),  # decode
    ])
    next_ids = logits.argmax(-1).tolist()

The weights are read once from a `LlamaForCausalLM` and cast to `dtype`; the math is written
out here instead of calling the HF modules because their attention wants one contiguous cache
per sequence. It follows HF's Llama op for op, so float32 logits agree with
`model(input_ids).logits` to about 1e-5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclass(frozen=True)
class StepInput:
    """One sequence's work in one step."""

    # The tokens to run: a whole prompt (prefill; after a preemption, prompt + outputs so far)
    # or the one last output token (decode).
    token_ids: list[int]
    # Position of token_ids[0]; the K/V of every earlier position is already in the cache.
    start_position: int
    # This sequence's KV blocks in order; must cover start_position + len(token_ids) positions.
    block_table: list[int]


# Attention kernels without per-shape set-up. cuDNN's attention, torch's first choice on an
# H100 since 2.5, builds a plan for every new shape, and a serving step's shapes change every
# step (each sequence's context grows): on an H100 the engine's first burst ran at 1/9 of the
# speed of the same burst repeated. The memory-efficient kernel takes a mask and any shape.
_ATTENTION_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    # q, k and v stacked (and gate and up): one matmul instead of three (two), which is most
    # of the cost of a small model's step on a GPU, where launches dominate.
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o_proj: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


@dataclass(frozen=True)
class _Prefill:
    rows: slice  # this item's rows in the packed tokens of the step
    context_slots: torch.Tensor  # [context_len] flat cache slots of positions 0..end-1
    mask: torch.Tensor  # [groups * n, context_len], True where a query may attend


@dataclass(frozen=True)
class _Plan:
    """Where every token of a step goes, built once per step and used by every layer."""

    token_ids: torch.Tensor  # [T] all items' tokens packed
    positions: torch.Tensor  # [T]
    write_slots: torch.Tensor  # [T] flat cache slot of each token's K/V
    last_rows: torch.Tensor  # [len(items)] the row of each item's last token
    decode_rows: torch.Tensor | None  # [B] rows of the one-token items
    decode_slots: torch.Tensor | None  # [B, longest context], padded with slot 0
    decode_mask: torch.Tensor | None  # [B, 1, 1, longest context], False on the padding
    prefills: list[_Prefill]


class PagedLlama:
    """A LlamaForCausalLM's weights plus a paged KV cache; `forward` runs one engine step.

    The cache is one tensor per layer for K and one for V, each
    [num_blocks, block_size, num_kv_heads, head_dim] in `dtype` on `device`. The runner keeps
    its own copy of the weights it stacks (q/k/v, gate/up); the HF model may be dropped.
    """

    def __init__(self, model, *, num_blocks: int, block_size: int, device=None, dtype=None):
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive integer, not {num_blocks!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, not {block_size!r}")
        config = model.config
        rope_theta = _check_config(config)
        if not all(hasattr(model, name) for name in ("model", "lm_head")):
            raise ValueError(
                f"PagedLlama needs a LlamaForCausalLM (with .model and .lm_head), "
                f"not a {type(model).__name__}"
            )
        first = next(model.parameters())
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype if dtype is not None else first.dtype
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.vocab_size = int(config.vocab_size)
        self.num_layers = int(config.num_hidden_layers)
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.norm_eps = float(config.rms_norm_eps)
        self.scale = self.head_dim**-0.5  # as HF's LlamaAttention.scaling

        def take(tensor):
            if tensor is None:
                return None
            return tensor.detach().to(device=self.device, dtype=self.dtype)

        def stacked(*linears):
            weight = torch.cat([take(linear.weight) for linear in linears])
            if linears[0].bias is None:
                return weight, None
            return weight, torch.cat([take(linear.bias) for linear in linears])

        self._layers = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, qkv_bias = stacked(attn.q_proj, attn.k_proj, attn.v_proj)
            gate_up, gate_up_bias = stacked(mlp.gate_proj, mlp.up_proj)
            self._layers.append(
                _Layer(
                    input_norm=take(layer.input_layernorm.weight),
                    qkv=qkv,
                    qkv_bias=qkv_bias,
                    o_proj=take(attn.o_proj.weight),
                    o_bias=take(attn.o_proj.bias),
                    post_norm=take(layer.post_attention_layernorm.weight),
                    gate_up=gate_up,
                    gate_up_bias=gate_up_bias,
                    down=take(mlp.down_proj.weight),
                    down_bias=take(mlp.down_proj.bias),
                )
            )
        embed = model.model.embed_tokens.weight
        self._embed = take(embed)
        head = model.lm_head.weight
        # Tied embeddings: one tensor serves both ends, as in the HF model.
        self._lm_head = self._embed if head is embed else take(head)
        self._lm_head_bias = take(getattr(model.lm_head, "bias", None))
        self._final_norm = take(model.model.norm.weight)
        # As HF's default rotary: computed in float32, cast to the activations' dtype per use.
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim
        self._inv_freq = (1.0 / (rope_theta**exponents)).to(self.device)

        shape = (num_blocks, block_size, self.num_kv_heads, self.head_dim)
        self.k_cache = [self._zeros(shape) for _ in range(self.num_layers)]
        self.v_cache = [self._zeros(shape) for _ in range(self.num_layers)]

    def _zeros(self, shape) -> torch.Tensor:
        # Zeros, not empty: padded decode rows read unwritten slots (masked out), and garbage
        # there could hold NaN, which a zero attention weight does not cancel.
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def replace_weights(self, convert) -> None:
        """Swap every decoder layer's matmul weights (the stacked q/k/v, o, the stacked
        gate/up, down) for `convert(weight)`: a callable x -> x @ weight.T, e.g. a quantized
        linear. For experiments such as bench/serving_milestone.py; the bf16 copies are dropped.
        """
        self._layers = [
            dataclasses.replace(
                layer,
                qkv=convert(layer.qkv),
                o_proj=convert(layer.o_proj),
                gate_up=convert(layer.gate_up),
                down=convert(layer.down),
            )
            for layer in self._layers
        ]

    def weight_bytes(self) -> int:
        """Bytes of the weights the runner holds (tensors, or converted weights' buffers)."""
        seen: dict[int, int] = {}
        for layer in self._layers:
            for value in vars(layer).values():
                for tensor in _tensors_of(value):
                    seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        for tensor in (self._embed, self._lm_head, self._final_norm):
            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return sum(seen.values())

    def kv_cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k_cache, *self.v_cache))

    @torch.inference_mode()
    def forward(self, items: Sequence[StepInput]) -> torch.Tensor:
        """Write every item's K/V into its slots, attend causally over each sequence's cached
        context plus its new tokens, and return the float32 logits of each item's last token:
        [len(items), vocab_size], in the order of `items`."""
        if not items:
            return torch.empty(0, self.vocab_size, device=self.device, dtype=torch.float32)
        plan = self._plan(items)
        with sdpa_kernel(_ATTENTION_BACKENDS):
            return self._layers_forward(plan)

    def _layers_forward(self, plan: _Plan) -> torch.Tensor:
        x = F.embedding(plan.token_ids, self._embed)
        cos, sin = self._rotary(plan.positions)
        num_q, num_kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        for layer, k_cache, v_cache in zip(self._layers, self.k_cache, self.v_cache, strict=True):
            h = _rms_norm(x, layer.input_norm, self.norm_eps)
            q, k, v = _linear(h, layer.qkv, layer.qkv_bias).split([num_q, num_kv, num_kv], -1)
            q = _rotate(q.view(-1, self.num_heads, self.head_dim), cos, sin)
            k = _rotate(k.view(-1, self.num_kv_heads, self.head_dim), cos, sin)
            k_flat = k_cache.view(-1, self.num_kv_heads, self.head_dim)
            v_flat = v_cache.view(-1, self.num_kv_heads, self.head_dim)
            k_flat[plan.write_slots] = k
            v_flat[plan.write_slots] = v.view(-1, self.num_kv_heads, self.head_dim)
            attended = self._attention(q, k_flat, v_flat, plan)
            x = x + _linear(attended, layer.o_proj, layer.o_bias)
            h = _rms_norm(x, layer.post_norm, self.norm_eps)
            gate, up = _linear(h, layer.gate_up, layer.gate_up_bias).chunk(2, -1)
            x = x + _linear(F.silu(gate) * up, layer.down, layer.down_bias)
        last = _rms_norm(x[plan.last_rows], self._final_norm, self.norm_eps)
        return F.linear(last, self._lm_head, self._lm_head_bias).float()

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self._inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1 (heads), head_dim]
        return angles.cos().to(self.dtype), angles.sin().to(self.dtype)

    def _attention(self, q, k_flat, v_flat, plan: _Plan) -> torch.Tensor:
        """q [T, heads, head_dim] -> [T, heads * head_dim].

        Grouped-query attention without copying K/V per query head: the query heads that share
        a kv head (heads kv*G .. kv*G+G-1, as HF's repeat_kv orders them) are folded into the
        query-length axis, so SDPA sees num_kv_heads heads, each with G times the queries."""
        kv_heads, dim = self.num_kv_heads, self.head_dim
        groups = self.num_heads // kv_heads
        out = torch.empty_like(q)
        if plan.decode_rows is not None:
            batch = plan.decode_rows.numel()
            queries = q[plan.decode_rows].view(batch, kv_heads, groups, dim)
            keys = k_flat[plan.decode_slots].transpose(1, 2)  # [B, kv_heads, context, dim]
            values = v_flat[plan.decode_slots].transpose(1, 2)
            attended = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=plan.decode_mask, scale=self.scale
            )
            out[plan.decode_rows] = attended.reshape(batch, self.num_heads, dim)
        for item in plan.prefills:
            n = item.rows.stop - item.rows.start
            queries = q[item.rows].view(n, kv_heads, groups, dim).permute(1, 2, 0, 3)
            keys = k_flat[item.context_slots].transpose(0, 1)  # [kv_heads, context, dim]
            values = v_flat[item.context_slots].transpose(0, 1)
            attended = F.scaled_dot_product_attention(
                queries.reshape(kv_heads, groups * n, dim),
                keys,
                values,
                attn_mask=item.mask,
                scale=self.scale,
            )
            out[item.rows] = (
                attended.view(kv_heads, groups, n, dim)
                .permute(2, 0, 1, 3)
                .reshape(n, self.num_heads, dim)
            )
        return out.view(q.shape[0], -1)

    def _plan(self, items: Sequence[StepInput]) -> _Plan:
        """Check the items and turn their block tables into slot indices, on the host, then
        move them to the device in a few copies."""
        size = self.block_size
        token_ids: list[int] = []
        positions: list[int] = []
        write_slots: list[int] = []
        last_rows: list[int] = []
        decode_rows: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lengths: list[int] = []
        prefill_items: list[tuple[slice, int, list[int]]] = []
        row = 0
        for index, item in enumerate(items):
            self._check_item(index, item)
            n, start = len(item.token_ids), int(item.start_position)
            end = start + n
            table = [int(block) for block in item.block_table[: -(-end // size)]]
            token_ids.extend(item.token_ids)
            positions.extend(range(start, end))
            write_slots.extend(table[p // size] * size + p % size for p in range(start, end))
            if n == 1:
                decode_rows.append(row)
                decode_tables.append(table)
                decode_lengths.append(end)
            else:
                prefill_items.append((slice(row, row + n), start, table))
            row += n
            last_rows.append(row - 1)
        self._check_no_shared_blocks(items)

        def put(values) -> torch.Tensor:
            tensor = values if isinstance(values, torch.Tensor) else torch.tensor(values)
            return tensor.to(self.device, non_blocking=True)

        decode = (None, None, None)
        if decode_rows:
            # One padded [B, longest context] slot index for all decodes: one gather and one
            # SDPA call per layer, the padding masked out.
            width = max(len(table) for table in decode_tables)
            padded = [table + [0] * (width - len(table)) for table in decode_tables]
            slots = self._context_slots(torch.tensor(padded))[:, : max(decode_lengths)]
            mask = torch.arange(slots.shape[1])[None, :] < torch.tensor(decode_lengths)[:, None]
            decode = (put(decode_rows), put(slots), put(mask[:, None, None, :]))
        groups = self.num_heads // self.num_kv_heads
        prefills = []
        for rows, start, table in prefill_items:
            end = start + rows.stop - rows.start
            context = self._context_slots(torch.tensor([table]))[0, :end]
            # Query i (position start + i) sees keys 0..start + i; repeated for the G query
            # heads folded into each kv head's rows (see _attention).
            causal = torch.arange(end)[None, :] <= torch.arange(start, end)[:, None]
            prefills.append(_Prefill(rows, put(context), put(causal.repeat(groups, 1))))
        return _Plan(
            token_ids=put(token_ids),
            positions=put(positions),
            write_slots=put(write_slots),
            last_rows=put(last_rows),
            decode_rows=decode[0],
            decode_slots=decode[1],
            decode_mask=decode[2],
            prefills=prefills,
        )

    def _context_slots(self, tables: torch.Tensor) -> torch.Tensor:
        """[batch, blocks] block ids -> [batch, blocks * block_size] flat cache slots of
        positions 0, 1, 2... (slot = block * block_size + offset in the block)."""
        offsets = torch.arange(self.block_size)
        return (tables[:, :, None] * self.block_size + offsets).flatten(1)

    def _check_item(self, index: int, item: StepInput) -> None:
        where = f"step input {index}"
        if not item.token_ids:
            raise ValueError(f"{where} has no tokens: each item runs at least one token")
        if not isinstance(item.start_position, Integral) or item.start_position < 0:
            raise ValueError(
                f"{where}: start_position must be an integer >= 0, not {item.start_position!r}"
            )
        low, high = min(item.token_ids), max(item.token_ids)
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"{where}: token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        end = item.start_position + len(item.token_ids)
        needed = -(-end // self.block_size)
        if len(item.block_table) < needed:
            raise ValueError(
                f"{where}: its block table is too short: positions 0..{end - 1} need {needed} "
                f"blocks of {self.block_size} tokens, but it lists {len(item.block_table)} "
                f"({item.block_table})"
            )
        table = item.block_table
        # type() first: this runs for every sequence every step; numpy integers take the
        # slower isinstance path and pass.
        if not all(type(block) is int for block in table):
            bad = next((block for block in table if not isinstance(block, Integral)), None)
            if bad is not None:
                raise ValueError(f"{where}: block ids must be integers, not {bad!r}")
        if table and (min(table) < 0 or max(table) >= self.num_blocks):
            bad = next(block for block in table if not 0 <= block < self.num_blocks)
            raise ValueError(
                f"{where}: block id {bad} is out of range: the cache has blocks "
                f"0..{self.num_blocks - 1}"
            )
        used = table[:needed]
        if len(set(used)) < len(used):
            twice = next(b for b in used if used.count(b) > 1)
            raise ValueError(
                f"{where}: block {twice} appears twice in its block table {item.block_table}; "
                f"two positions would share one slot"
            )

    def _check_no_shared_blocks(self, items: Sequence[StepInput]) -> None:
        # A block that one item writes this step must not be in another item's table: they
        # would overwrite each other's K/V, or read K/V of the wrong sequence. (Blocks that
        # several sequences only read, as a shared prompt prefix, would be fine.)
        size = self.block_size
        writers: dict[int, int] = {}
        for index, item in enumerate(items):
            end = item.start_position + len(item.token_ids)
            for block in item.block_table[item.start_position // size : -(-end // size)]:
                writers.setdefault(block, index)
        for index, item in enumerate(items):
            end = item.start_position + len(item.token_ids)
            for block in item.block_table[: -(-end // size)]:
                writer = writers.get(block, index)
                if writer != index:
                    raise ValueError(
                        f"step inputs {writer} and {index} both have block {block} in their "
                        f"block tables, and step input {writer} writes it this step: a block "
                        f"being written belongs to one sequence"
                    )


def _check_config(config) -> float:
    """The rotary base; ValueError naming anything in the config this runner does not do."""
    model_type = getattr(config, "model_type", None)
    if model_type != "llama":
        raise ValueError(f"PagedLlama runs Llama models (model_type 'llama'), not {model_type!r}")
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"PagedLlama supports hidden_act 'silu' (SwiGLU), not {act!r}")
    if config.num_attention_heads % config.num_key_value_heads:
        raise ValueError(
            f"num_attention_heads ({config.num_attention_heads}) must be a multiple of "
            f"num_key_value_heads ({config.num_key_value_heads})"
        )
    # transformers 5 keeps rotary settings in rope_parameters (and answers rope_scaling with
    # the same dict); 4.x has rope_theta, and rope_scaling None unless positions are scaled.
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(
            f"PagedLlama supports plain rotary positions only; this config sets rope_scaling "
            f"(rope_type {rope_type!r}: {rope})"
        )
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError("the config gives no rope_theta (the rotary base)")
    return float(theta)


def _linear(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear for a weight tensor; a converted weight (replace_weights) is called."""
    if isinstance(weight, torch.Tensor):
        return F.linear(x, weight, bias)
    y = weight(x)
    return y if bias is None else y + bias


def _tensors_of(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, torch.nn.Module):
        return [*value.parameters(), *value.buffers()]
    return []


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # As HF's LlamaRMSNorm: statistics in float32, scaled back in the activations' dtype.
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # HF Llama's convention: the head dimension's two halves are the (real, imaginary) pairs.
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
