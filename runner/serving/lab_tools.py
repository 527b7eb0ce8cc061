"""What the `serving` lab's notebook calls to try a scheduler the way the grader will: build
the engine around it, serve it on a private Unix socket, send a burst of requests with the load
harness, and compare with static batching. The grader (runner/graders/serving.py) does the
same in sandboxed processes, with a secret workload.

    from runner.serving import lab_tools
    workload = lab_tools.sample_workload(24, seed=0)
    lab_tools.check_tokens(Scheduler, BlockManager, workload, settings=lab_tools.CPU_SETTINGS)
    table = lab_tools.compare(Scheduler, BlockManager, workload, settings=lab_tools.CPU_SETTINGS)

Imports torch and the model only when called.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# The lab's CPU scale (notebooks/serving/lab.toml, [options.scale.cpu]).
CPU_SETTINGS: dict[str, Any] = {
    "num_blocks": 64,
    "block_size": 16,
    "max_num_seqs": 16,
    "max_num_batched_tokens": 512,
    "max_model_len": 192,
    "device": "cpu",
    "dtype": "float32",
}
MODEL_NAME = "target"


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    max_tokens: list[int]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: slice) -> Workload:
        return Workload(self.prompts[index], self.max_tokens[index])


def sample_workload(
    count: int,
    *,
    seed: int | list[int] = 0,
    prompt_tokens: tuple[int, int] = (16, 64),
    output_tokens: tuple[int, int] = (8, 64),
) -> Workload:
    """Prompts cut from the held-out text at random offsets, and random output lengths (the
    grader draws its secret workload with this too, from the submission's seed)."""
    import numpy as np

    from runner.llm import corpus
    from runner.llm import tokenizer as tokenization

    rng = np.random.default_rng(np.random.SeedSequence(seed))
    tokenizer = tokenization.load_tokenizer()
    stream = tokenization.encode_documents(tokenizer, corpus.texts(corpus.read_corpus(), "heldout"))
    prompts, max_tokens = [], []
    for _ in range(count):
        length = int(rng.integers(prompt_tokens[0], prompt_tokens[1] + 1))
        start = int(rng.integers(0, len(stream) - length))
        prompts.append([int(t) for t in stream[start : start + length]])
        max_tokens.append(int(rng.integers(output_tokens[0], output_tokens[1] + 1)))
    return Workload(prompts, max_tokens)


def static_scheduler(settings: dict[str, Any]):
    """The baseline: static batching, KV for max_model_len reserved per sequence up front."""
    from runner.serving.engine import ReservingBlockManager, StaticBatchScheduler

    return StaticBatchScheduler(
        ReservingBlockManager(int(settings["num_blocks"]), int(settings["block_size"])),
        max_num_seqs=int(settings["max_num_seqs"]),
        max_num_batched_tokens=int(settings["max_num_batched_tokens"]),
        reserve_tokens=int(settings["max_model_len"]),
    )


def your_scheduler(scheduler_class, block_manager_class, settings: dict[str, Any]):
    """Scheduler(BlockManager(num_blocks, block_size), max_num_seqs=.., max_num_batched_tokens=..),
    as the grader builds it."""
    blocks = block_manager_class(int(settings["num_blocks"]), int(settings["block_size"]))
    return scheduler_class(
        blocks,
        max_num_seqs=int(settings["max_num_seqs"]),
        max_num_batched_tokens=int(settings["max_num_batched_tokens"]),
    )


_MODELS: dict[tuple[str, str], Any] = {}


def model_for(settings: dict[str, Any]):
    import torch

    from runner.llm import load_model

    key = (str(settings["device"]), str(settings["dtype"]))
    if key not in _MODELS:
        _MODELS[key] = load_model(device=key[0], dtype=getattr(torch, key[1]))
    return _MODELS[key]


def build_engine(scheduler, settings: dict[str, Any]):
    import torch

    from runner.llm import load_tokenizer
    from runner.serving.engine import LLMEngine, PagedLlama

    runner = PagedLlama(
        model_for(settings),
        num_blocks=int(settings["num_blocks"]),
        block_size=int(settings["block_size"]),
        device=torch.device(str(settings["device"])),
        dtype=getattr(torch, str(settings["dtype"])),
    )
    return LLMEngine(
        runner,
        scheduler,
        eos_token_id=load_tokenizer().eos_token_id,
        max_model_len=int(settings["max_model_len"]),
        max_num_seqs=int(settings["max_num_seqs"]),
        max_num_batched_tokens=int(settings["max_num_batched_tokens"]),
    )


@contextlib.contextmanager
def serving(scheduler, settings: dict[str, Any]) -> Iterator[str]:
    """The engine with `scheduler` behind the OpenAI-compatible server on a Unix socket in a
    private temporary folder; yields its base URL (unix:///...). Stops both on exit."""
    with served_engine(build_engine(scheduler, settings)) as url:
        yield url


@contextlib.contextmanager
def served_engine(engine, *, model_name: str = MODEL_NAME) -> Iterator[str]:
    """Any LLMEngine behind the server on a private Unix socket; yields its base URL."""
    from runner.llm import load_tokenizer
    from runner.serving.engine import EngineThread
    from runner.serving.openai_server import start_in_thread

    thread = EngineThread(engine)
    thread.start()
    try:
        with tempfile.TemporaryDirectory(prefix="engine-") as folder:
            os.chmod(folder, 0o700)
            handle = start_in_thread(
                thread,
                load_tokenizer(),
                model_name=model_name,
                socket_path=os.path.join(folder, "engine.sock"),
                max_model_len=engine.max_model_len,
                vocab_size=engine.runner.vocab_size,
            )
            try:
                yield handle.address
            finally:
                handle.stop()
    finally:
        thread.stop()


def check_tokens(
    scheduler_class,
    block_manager_class,
    workload: Workload,
    *,
    settings: dict[str, Any],
    tie_margin: float = 1e-3,
) -> dict[str, Any]:
    """Your engine's tokens (every request at once, in process) against each prompt generated
    alone by the HF model; `tie_margin` as lab.toml's (float32). Prints the first
    differences; returns the counts."""
    from runner.graders.serving_lab import compare_tokens
    from runner.serving.engine import greedy_alone

    engine = build_engine(your_scheduler(scheduler_class, block_manager_class, settings), settings)
    got = engine.generate(workload.prompts, max_tokens=workload.max_tokens, ignore_eos=True)
    model = model_for(settings)
    reference = []
    for prompt, max_tokens in zip(workload.prompts, workload.max_tokens, strict=True):
        out = greedy_alone(model, prompt, max_tokens, eos_token_id=None, ignore_eos=True)
        reference.append({"token_ids": out.token_ids, "margins": out.margins})
    comparison = compare_tokens(got, reference, tie_margin=tie_margin)
    result = {
        "requests": len(workload),
        "exact": comparison.exact,
        "ties": comparison.ties,
        "wrong": comparison.wrong_count,
        "steps": engine.num_steps,
        "preemptions": engine.num_preemptions,
    }
    print(
        f"{comparison.exact} of {len(workload)} requests exact, {comparison.ties} ties, "
        f"{comparison.wrong_count} wrong; {engine.num_steps} steps, "
        f"{engine.num_preemptions} preemptions"
    )
    for wrong in comparison.wrong:
        print(f"  request {wrong['request']}: {wrong['problem']}")
    return result


def compare(
    scheduler_class,
    block_manager_class,
    workload: Workload,
    *,
    settings: dict[str, Any],
    rate: float = math.inf,
    on_result: Callable[[str, Any], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Static batching, then your scheduler, each served and sent the workload by the load
    harness (every request at once by default). Returns each one's vLLM-style summary."""
    from runner.serving.loadgen import RequestSpec, run_load_sync

    requests = [
        RequestSpec(prompt=p, max_tokens=m, extra={"return_token_ids": True}, prompt_len=len(p))
        for p, m in zip(workload.prompts, workload.max_tokens, strict=True)
    ]
    engines = {
        "static batching": static_scheduler(settings),
        "yours": your_scheduler(scheduler_class, block_manager_class, settings),
    }
    summaries: dict[str, dict[str, Any]] = {}
    for name, scheduler in engines.items():
        with serving(scheduler, settings) as url:
            result = run_load_sync(
                url, requests, model=MODEL_NAME, rate=rate, timeout_s=120, overall_timeout_s=300
            )
        summaries[name] = result.summary(percentiles=(50, 99))
        if on_result:
            on_result(name, result)
    print(f"{'':18}{'done':>6}{'out tok/s':>11}{'p50 TTFT ms':>13}{'p99 TTFT ms':>13}")
    for name, s in summaries.items():
        print(
            f"{name:18}{s['completed']:>6}{s['output_throughput']:>11.1f}"
            f"{_ms(s.get('median_ttft_ms')):>13}{_ms(s.get('p99_ttft_ms')):>13}"
        )
    base = summaries["static batching"]["output_throughput"]
    if base:
        print(f"throughput gain: {summaries['yours']['output_throughput'] / base:.2f}x")
    return summaries


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
