"""The two models' shapes: a real Llama architecture (RMSNorm, rotary positions, SwiGLU,
grouped-query attention), small enough to commit and to run on a CPU grader.

The draft shares the tokenizer with the target, as speculative decoding needs."""

from __future__ import annotations

from typing import Any

# Trained on windows of this many tokens; rotary positions have no weights, so the config
# allows longer inputs, but the models have never seen positions past it.
TRAIN_SEQ_LEN = 512
MAX_POSITIONS = 1024

SHAPES: dict[str, dict[str, int]] = {
    # ~3.8M parameters with vocab 4096 and tied embeddings.
    "target": {
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
    },
    # ~0.9M parameters: what a draft should be, several times cheaper per token.
    "draft": {
        "hidden_size": 128,
        "intermediate_size": 344,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}
ROLES = tuple(SHAPES)

# Published shapes for speed measurements on randomly initialised weights: fast kernels care
# about shapes, not values. Quality is never measured on these, and every report says which
# weights it used.
LARGE_SHAPES: dict[str, dict[str, int]] = {
    "llama-2-7b": {  # 6.74B parameters, 13.5 GB in bf16: fits one H100
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    "llama-3-8b": {  # 8.03B parameters, grouped-query attention
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
    },
}


def llama_config(*, role: str, vocab_size: int, eos_token_id: int, pad_token_id: int):
    from transformers import LlamaConfig

    if role not in SHAPES:
        raise ValueError(f"unknown model role {role!r}; expected one of {', '.join(ROLES)}")
    options: dict[str, Any] = {
        **SHAPES[role],
        "vocab_size": vocab_size,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
        # Input and output embeddings shared: at this size they would be a third of the
        # weights twice over.
        "tie_word_embeddings": True,
        # <|endoftext|> both starts and ends a document (see tokenizer.py).
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }
    return LlamaConfig(**options)


def parameter_count(model) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def random_model(shape: str, *, device: str = "cpu", dtype=None):
    """A LlamaForCausalLM of a published shape with random weights, created directly on
    `device` (never first on the host: 7B parameters would take minutes to initialise there).
    device="meta" gives the structure without memory."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if shape not in LARGE_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(LARGE_SHAPES)}")
    config = LlamaConfig(**LARGE_SHAPES[shape], rms_norm_eps=1e-5, tie_word_embeddings=False)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype or torch.bfloat16, attn_implementation="sdpa"
        )
    return model.eval()
