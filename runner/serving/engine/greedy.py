"""Reference greedy generation: one request alone through the Hugging Face model and its own
KV cache, with no batching and no paging. These are the tokens the serving grader expects from
any engine and any scheduler.

    reference = greedy_alone(model, prompt_ids, 64, eos_token_id=tokenizer.eos_token_id)
    reference.token_ids   # what the engine must produce
    reference.margins     # how close each choice was: top-1 minus top-2 logit

A batched matmul rounds differently from an unbatched one, so a correct engine can pick
another token where two logits nearly tie; the margins let the grader accept a divergence
there and only there.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GreedyOutput:
    token_ids: list[int]
    margins: list[float]  # per generated token: top-1 logit minus top-2 logit, in float32


@torch.inference_mode()
def greedy_alone(
    model,
    prompt_ids: list[int],
    max_tokens: int,
    *,
    eos_token_id: int | None,
    ignore_eos: bool = True,
    device=None,
) -> GreedyOutput:
    """Argmax decoding of `max_tokens` tokens after `prompt_ids`; stops after generating
    `eos_token_id` unless `ignore_eos` (the eos token is then kept, as vLLM does). `device` is
    where the inputs go; the model's own device by default."""
    vocab_size = model.config.vocab_size
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: a request needs at least one prompt token")
    if not 0 <= min(prompt_ids) <= max(prompt_ids) < vocab_size:
        raise ValueError(f"prompt_ids must be token ids in 0..{vocab_size - 1}")
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, not {max_tokens}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    # transformers 5 renamed past_key_values to cache (the old name warns, then goes).
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else None
    cache_arg = cache_arg or "past_key_values"
    tokens: list[int] = []
    margins: list[float] = []
    inputs = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    cache = None
    while len(tokens) < max_tokens:
        past = {} if cache is None else {cache_arg: cache}
        out = model(input_ids=inputs, use_cache=True, **past)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        logits = out.logits[0, -1].float()
        token = int(logits.argmax())
        top = torch.topk(logits, 2).values
        tokens.append(token)
        margins.append(float(top[0] - top[1]))
        if not ignore_eos and token == eos_token_id:
            break
        inputs = torch.tensor([[token]], dtype=torch.long, device=device)
    return GreedyOutput(token_ids=tokens, margins=margins)
