"""The serving engine's model runner and reference greedy (runner/serving/engine/): PagedLlama
gives HF Llama's logits whatever the block tables look like and however prefills and decodes
are mixed in a step, refuses bad block tables and configs it does not support, and
greedy_alone gives HF generate's tokens."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from runner.llm import load_model, load_tokenizer
from runner.serving.engine.greedy import greedy_alone
from runner.serving.engine.model_runner import PagedLlama, StepInput

ATOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    # A tiny model: on a busy 2-core machine a second thread mostly waits (see test_llm.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def prompt(model) -> list[int]:
    return load_tokenizer()("def fibonacci(n):\n    ")["input_ids"]


def hf_last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def random_ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(n)]


def run_alone(runner: PagedLlama, ids: list[int], table: list[int], chunks: list[int]):
    """Feed `ids` to one sequence alone, in chunks of the given sizes: the logits after each."""
    out, start = [], 0
    for size in chunks:
        out.append(runner.forward([StepInput(ids[start : start + size], start, table)])[0])
        start += size
    return out


# PagedLlama against the HF model


def test_prefill_gives_hf_logits_on_a_shuffled_block_table(model):
    rng = random.Random(1)
    ids = random_ids(rng, 37, model.config.vocab_size)
    runner = PagedLlama(model, num_blocks=32, block_size=4)
    table = rng.sample(range(32), 10)  # 37 positions in blocks of 4, in no particular order
    logits = runner.forward([StepInput(ids, 0, table)])
    assert logits.shape == (1, model.config.vocab_size)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits[0], hf_last_logits(model, ids), atol=ATOL, rtol=0)


def test_prefill_then_decode_gives_greedy_alone_token_for_token(model, prompt):
    runner = PagedLlama(model, num_blocks=16, block_size=8)
    table = [11, 3, 7, 0, 14, 9]  # room for 48 positions
    expected = greedy_alone(model, prompt, 30, eos_token_id=None)
    logits = runner.forward([StepInput(prompt, 0, table)])
    generated = [int(logits.argmax())]
    while len(generated) < 30:
        position = len(prompt) + len(generated) - 1
        logits = runner.forward([StepInput(generated[-1:], position, table)])
        generated.append(int(logits.argmax()))
    assert generated == expected.token_ids


def test_mixed_steps_on_interleaved_blocks_give_each_sequence_alone_logits(model):
    rng = random.Random(2)
    vocab = model.config.vocab_size
    size = 4
    runner = PagedLlama(model, num_blocks=24, block_size=size)
    # Three sequences' blocks dealt from one shuffled pile: interleaved and non-contiguous.
    pile = rng.sample(range(24), 15)
    tables = {"a": pile[0::3], "b": pile[1::3], "c": pile[2::3]}
    ids = {name: random_ids(rng, 20, vocab) for name in tables}
    # Each step: (sequence, number of new tokens). "b" continues its prompt in a second chunk
    # (start_position > 0 with several tokens: the causal mask over cached context).
    steps = [
        [("a", 9), ("b", 5)],
        [("a", 1), ("c", 7), ("b", 1)],
        [("c", 1), ("b", 3), ("a", 1)],
        [("b", 1), ("a", 1), ("c", 1)],
        [("c", 1), ("a", 1)],
    ]
    done = dict.fromkeys(tables, 0)
    got: dict[str, list[torch.Tensor]] = {name: [] for name in tables}
    chunks: dict[str, list[int]] = {name: [] for name in tables}
    for step in steps:
        items = []
        for name, n in step:
            start = done[name]
            items.append(StepInput(ids[name][start : start + n], start, tables[name]))
            done[name] += n
            chunks[name].append(n)
        logits = runner.forward(items)
        assert logits.shape == (len(items), vocab)
        for (name, _), row in zip(step, logits, strict=True):
            got[name].append(row)
    for name in tables:
        fed = ids[name][: done[name]]
        runner_alone = PagedLlama(model, num_blocks=8, block_size=size)
        alone = run_alone(runner_alone, fed, list(range(8)), chunks[name])
        ends = [sum(chunks[name][: i + 1]) for i in range(len(chunks[name]))]
        for row, single, end in zip(got[name], alone, ends, strict=True):
            torch.testing.assert_close(row, single, atol=ATOL, rtol=0)
            torch.testing.assert_close(row, hf_last_logits(model, fed[:end]), atol=ATOL, rtol=0)


def test_replaced_weights_are_called_in_place_of_the_matmuls(model, prompt):
    table = list(range(4))
    plain = PagedLlama(model, num_blocks=4, block_size=16)
    before = run_alone(plain, prompt, table, [len(prompt)])[0]
    calls = []

    def same(weight):
        def linear(x):
            calls.append(weight.shape)
            return torch.nn.functional.linear(x, weight)

        return linear

    converted = PagedLlama(model, num_blocks=4, block_size=16)
    converted.replace_weights(same)
    assert torch.allclose(run_alone(converted, prompt, table, [len(prompt)])[0], before, atol=ATOL)
    assert len(calls) == 4 * model.config.num_hidden_layers  # qkv, o, gate_up, down per layer
    # The closures hold the same tensors, which weight_bytes does not see: only the rest.
    assert 0 < converted.weight_bytes() < plain.weight_bytes()
    # A converted weight that computes something else changes the logits.
    halved = PagedLlama(model, num_blocks=4, block_size=16)
    halved.replace_weights(lambda w: lambda x: torch.nn.functional.linear(x, w / 2))
    assert not torch.allclose(run_alone(halved, prompt, table, [len(prompt)])[0], before, atol=1e-2)


def test_no_items_give_no_logits(model):
    runner = PagedLlama(model, num_blocks=2, block_size=4)
    assert runner.forward([]).shape == (0, model.config.vocab_size)


def test_kv_cache_is_one_k_and_one_v_tensor_per_layer(model):
    runner = PagedLlama(model, num_blocks=5, block_size=3)
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    assert runner.k_cache[0].shape == (5, 3, config.num_key_value_heads, head_dim)
    per_layer = 2 * 5 * 3 * config.num_key_value_heads * head_dim * 4  # K and V, float32
    assert runner.kv_cache_bytes() == config.num_hidden_layers * per_layer


def test_bfloat16_runs_and_returns_float32_logits(model, prompt):
    runner = PagedLlama(model, num_blocks=8, block_size=16, dtype=torch.bfloat16)
    assert runner.k_cache[0].dtype == torch.bfloat16
    logits = runner.forward([StepInput(prompt, 0, [2, 5])])
    assert logits.dtype == torch.float32
    expected = hf_last_logits(model, prompt)
    # bf16 keeps about 3 significant digits: close to float32, nowhere near 1e-4.
    assert (logits[0] - expected).abs().max() < 0.05 * expected.abs().max()


def random_untied_llama() -> LlamaForCausalLM:
    """Everything the committed model does not exercise: untied head, as many kv heads as
    heads, head_dim not hidden / heads, another rotary base, biases."""
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        tie_word_embeddings=False,
        rope_theta=500.0,
        attention_bias=True,
        mlp_bias=True,
    )
    torch.manual_seed(3)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)  # HF starts biases and norms at 0 and 1: test them too
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    return model


def test_an_untied_model_with_as_many_kv_heads_as_heads_gives_hf_logits():
    model = random_untied_llama()
    ids = random_ids(random.Random(4), 14, 97)
    runner = PagedLlama(model, num_blocks=6, block_size=4)
    table = [4, 0, 5, 2]
    logits = run_alone(runner, ids, table, [11, 1, 1, 1])
    for end, row in zip([11, 12, 13, 14], logits, strict=True):
        torch.testing.assert_close(row, hf_last_logits(model, ids[:end]), atol=ATOL, rtol=0)


# Bad input


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([StepInput([5] * 9, 0, [1, 2])], "block table is too short"),
        ([StepInput([5], 8, [1, 2])], "block table is too short"),
        ([StepInput([5] * 3, 0, [8])], "block id 8 is out of range"),
        ([StepInput([5] * 3, 0, [-1])], "block id -1 is out of range"),
        ([StepInput([5] * 3, 0, [1.5])], "block ids must be integers, not 1.5"),
        ([StepInput([5] * 6, 0, [3, 3])], "block 3 appears twice"),
        ([StepInput([5] * 2, 0, [3]), StepInput([6], 2, [3])], "both have block 3"),
        ([StepInput([5] * 5, 0, [2, 3]), StepInput([6], 4, [1, 2])], "both have block 2"),
        ([StepInput([], 0, [1])], "has no tokens"),
        ([StepInput([5], -1, [1])], "start_position must be"),
        ([StepInput([4096], 0, [1])], "token id 4096 is outside the vocabulary"),
    ],
)
def test_bad_step_inputs_are_refused(model, items, message):
    runner = PagedLlama(model, num_blocks=8, block_size=4)
    with pytest.raises(ValueError, match=message):
        runner.forward(items)


def test_scaled_rotary_positions_are_refused():
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    )
    with pytest.raises(ValueError, match="rope_scaling.*linear"):
        PagedLlama(LlamaForCausalLM(config), num_blocks=2, block_size=4)


def test_a_bad_cache_size_is_refused(model):
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        PagedLlama(model, num_blocks=4, block_size=0)


# greedy_alone


def test_greedy_alone_gives_hf_generate_tokens_and_nonnegative_margins(model, prompt):
    eos = model.config.eos_token_id
    reference = greedy_alone(model, prompt, 40, eos_token_id=eos, ignore_eos=False)
    generated = model.generate(
        torch.tensor([prompt]), max_new_tokens=40, do_sample=False, eos_token_id=eos
    )
    assert reference.token_ids == generated[0, len(prompt) :].tolist()
    assert len(reference.margins) == len(reference.token_ids)
    assert all(margin >= 0 for margin in reference.margins)
    assert any(margin > 0 for margin in reference.margins)


def test_greedy_alone_stops_at_eos_unless_told_to_ignore_it(model, prompt):
    first = greedy_alone(model, prompt, 1, eos_token_id=None).token_ids[0]
    # Call the first greedy token "eos": the request ends right after it, or runs on.
    stopped = greedy_alone(model, prompt, 5, eos_token_id=first, ignore_eos=False)
    assert stopped.token_ids == [first]
    ignored = greedy_alone(model, prompt, 5, eos_token_id=first, ignore_eos=True)
    assert len(ignored.token_ids) == 5
    assert ignored.token_ids[0] == first
    assert greedy_alone(model, prompt, 0, eos_token_id=first).token_ids == []


def test_greedy_alone_refuses_an_empty_prompt(model):
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        greedy_alone(model, [], 3, eos_token_id=None)
