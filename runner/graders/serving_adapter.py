"""Trusted code inside the `serving` lab's sandboxed children (runner.harness.serve's
`--adapter`). The same adapter serves the learner's `Scheduler` (with the `BlockManager` their
notebook defines) and, in a clean child that loads no learner code, the static-batching
baseline, so both engines are built, loaded and served by exactly the same code.

Requests ("op"):
- "start": load the committed model, build PagedLlama + LLMEngine with the scheduler, start the
  engine thread and the OpenAI-compatible server on the listening socket the grader handed in
  (`listen_fd`: the sandbox has no network and no host folder, so the grader makes the socket
  outside and the child only accepts on it). Returns once the server listens.
- "reference": greedy tokens of each prompt generated alone with the HF model (and the
  top-1/top-2 logit margins), for the grader to compare the served tokens with. Only the
  clean child is asked.
- "status": the engine's failure (a SchedulerError's message, for the learner) and its step
  counters. Reported as what the learner's process says; nothing graded is taken from it.

What is graded comes from the worker's side of the socket: the load harness times every
streamed token, and the tokens are compared with the clean child's reference.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

_STATE: dict[str, Any] = {}


def static_scheduler(settings: dict[str, Any]):
    """The baseline: static batching, KV for max_model_len reserved per sequence up front."""
    from runner.serving import lab_tools

    return lab_tools.static_scheduler(settings)


def serve_engine(function: Callable[..., Any], request: dict[str, Any]) -> Any:
    op = request.get("op")
    if op == "start":
        return _start(function, request)
    if op == "reference":
        return _reference(request)
    if op == "status":
        return _status()
    raise ValueError(f"unknown request {op!r}")


def build_scheduler(function: Callable[..., Any], settings: dict[str, Any]):
    """The baseline factory is called as it is; the learner's `Scheduler` class is given a
    `BlockManager` from the same notebook, as the notebook's own check cell does."""
    from runner.serving import lab_tools

    if function is static_scheduler:
        return function(settings)
    module = sys.modules.get(getattr(function, "__module__", ""), None)
    block_manager = getattr(module, "BlockManager", None)
    if not callable(block_manager):
        raise LookupError(
            "your solution cell defines Scheduler but no BlockManager class: the grader builds "
            "Scheduler(BlockManager(num_blocks, block_size), max_num_seqs=..., "
            "max_num_batched_tokens=...)"
        )
    return lab_tools.your_scheduler(function, block_manager, settings)


def _start(function: Callable[..., Any], request: dict[str, Any]) -> dict[str, Any]:
    import torch

    from runner.llm import load_tokenizer
    from runner.serving import lab_tools
    from runner.serving.engine import EngineThread
    from runner.serving.openai_server import start_in_thread

    if _STATE:
        raise RuntimeError("the engine is already started")
    settings = dict(request["settings"])
    engine = lab_tools.build_engine(build_scheduler(function, settings), settings)
    thread = EngineThread(engine)
    thread.start()
    server = start_in_thread(
        thread,
        load_tokenizer(),
        model_name=str(request["model_name"]),
        sock=socket.socket(fileno=int(request["listen_fd"])),
        max_model_len=int(settings["max_model_len"]),
    )
    _STATE.update(
        model=lab_tools.model_for(settings),
        engine=engine,
        thread=thread,
        server=server,
        device=torch.device(str(settings["device"])),
    )
    return {"listening": True, "kv_cache_bytes": engine.runner.kv_cache_bytes()}


def _reference(request: dict[str, Any]) -> list[dict[str, Any]]:
    from runner.serving.engine import greedy_alone

    model, device = _STATE["model"], _STATE["device"]
    eos = getattr(model.config, "eos_token_id", None)
    answers = []
    for prompt, max_tokens in zip(request["prompts"], request["max_tokens"], strict=True):
        out = greedy_alone(
            model, list(prompt), int(max_tokens), eos_token_id=eos, ignore_eos=True, device=device
        )
        answers.append(
            {"token_ids": list(out.token_ids), "margins": [round(m, 6) for m in out.margins]}
        )
    return answers


def _status() -> dict[str, Any]:
    engine, thread = _STATE.get("engine"), _STATE.get("thread")
    failure = getattr(thread, "failure", None)
    stats = list(getattr(engine, "stats", []) or [])
    return {
        "failure": None if failure is None else failure.message,
        "rule": None if failure is None else failure.rule,
        "steps": getattr(engine, "num_steps", 0),
        "preemptions": getattr(engine, "num_preemptions", 0),
        "max_batch": max((s.num_prefill + s.num_decode for s in stats), default=0),
        "max_blocks_used": max((s.blocks_used for s in stats), default=0),
    }
