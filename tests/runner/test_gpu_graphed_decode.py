"""The quantization lab's graphed decode (runner.graders.quantization_measure.
graphed_decode_speed) on a real GPU, in process, on a small random Llama: it replays the same
tokens as eager decode (at batch 1 and at a batch where rounding may flip a near-tie), it
refuses a model whose step reads back to the host and leaves the device usable after that
failed capture, and it refuses a model that does something else while it is being captured.

Skipped where there is no NVIDIA GPU (CI has none; CPU tests cover the grader's use of it in
tests/runner/test_quantization_lab.py). On a GPU node:

    python -m pytest -m gpu tests/runner/test_gpu_graphed_decode.py -s
"""

from __future__ import annotations

import os

import pytest
import torch

from runner.graders.quantization_measure import GRAPH_AGREEMENT, graphed_decode_speed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not os.path.exists("/dev/nvidia0"), reason="no NVIDIA GPU on this node"),
    pytest.mark.timeout(600),
]

SHAPE = {"batch": 2, "prompt": 16, "new_tokens": 12, "reps": 2, "vocab": 512}


def small_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=SHAPE["vocab"],
        attn_implementation="sdpa",
    )
    with torch.device("cuda"):
        return LlamaForCausalLM(config).to(torch.bfloat16).eval()


@pytest.mark.parametrize("batch", [1, 32])
def test_graphed_decode_replays_the_eager_tokens(batch):
    speed = graphed_decode_speed(small_llama(), **{**SHAPE, "batch": batch})
    print(speed)
    assert "graph_problem" not in speed, speed
    assert speed["graph_token_agreement"] >= GRAPH_AGREEMENT
    assert speed["graphed_decode_tokens_per_s"] > 0


def test_a_step_that_reads_back_to_the_host_cannot_be_graphed():
    model = small_llama()
    norm = model.model.norm
    forward = norm.forward

    def syncing(hidden):
        out = forward(hidden)
        if float(out.abs().max().item()) < 0:  # a read-back: not allowed while capturing
            raise AssertionError
        return out

    norm.forward = syncing
    speed = graphed_decode_speed(model, **SHAPE)
    print(speed)
    assert "graphed_decode_tokens_per_s" not in speed
    assert speed["graph_problem"]
    # The failed capture left nothing behind: random ops on the device work (the grader's
    # next method draws its random weights there).
    assert torch.randn(4, device="cuda").isfinite().all()


def test_a_model_that_changes_while_captured_gets_no_speed():
    model = small_llama()
    head = model.lm_head
    forward = head.forward

    def two_faced(hidden):
        out = forward(hidden)
        # While captured: a constant answer, the same next token whatever the input.
        return torch.zeros_like(out) if torch.cuda.is_current_stream_capturing() else out

    head.forward = two_faced
    speed = graphed_decode_speed(model, **SHAPE)
    print(speed)
    assert "graphed_decode_tokens_per_s" not in speed
    assert "agree" in speed["graph_problem"]
