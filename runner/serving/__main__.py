"""Serve a model with the serving engine behind the OpenAI-compatible API.

    python -m runner.serving --port 8000          # the static-batching baseline, on TCP
    python -m runner.serving --socket /tmp/engine.sock \\
        --scheduler-file notebooks/serving/reference_solution.py
    curl -N http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"prompt": "The", "max_tokens": 32, "stream": true}'

Once the server listens, its address (`http://127.0.0.1:8000` or `unix:///tmp/engine.sock`)
is printed alone on a line of standard output; logs go to standard error. SIGINT or SIGTERM
stops it: requests in flight are cancelled, the engine thread stops and the socket file is
removed. `--scheduler-file` loads a Python file that defines `Scheduler` and `BlockManager`
(the `serving` lab's contract, runner/serving/engine/scheduling.py); `--scheduler static` is
the trusted baseline. The model is `--model` (a hub id or a folder), else the one the
INFERENCE_ROADMAP_MODEL setting names, else the project's committed model.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

DTYPES = ("auto", "float32", "bfloat16", "float16")


class SchedulerFileError(Exception):
    """A --scheduler-file that cannot be used; the message says why."""


def load_scheduler_file(path: Path) -> ModuleType:
    """Import a Python file by its path; it must define Scheduler and BlockManager."""
    if not path.is_file():
        raise SchedulerFileError(f"no scheduler file at {path}")
    spec = importlib.util.spec_from_file_location(f"scheduler_file_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SchedulerFileError(f"{path} cannot be imported as Python (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [name for name in ("Scheduler", "BlockManager") if not hasattr(module, name)]
    if missing:
        raise SchedulerFileError(f"{path} defines no {' and no '.join(missing)}")
    return module


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runner.serving",
        description="Serve a model through the serving engine's OpenAI-compatible API.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", type=Path, help="listen on this Unix socket path")
    where.add_argument("--port", type=int, help="listen on this TCP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="TCP address (default 127.0.0.1)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--scheduler", choices=("static",), default="static")
    which.add_argument(
        "--scheduler-file", type=Path, help="a .py file defining Scheduler and BlockManager"
    )
    parser.add_argument("--num-blocks", type=int, default=512, help="KV cache blocks")
    parser.add_argument("--block-size", type=int, default=16, help="token slots per block")
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument(
        "--max-model-len", type=int, help="prompt + output tokens (default: the model's)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (auto: cuda if any)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument("--model", help="hub id or folder (default: the configured model)")
    parser.add_argument("--served-model-name", help="the name clients use (default: from --model)")
    return parser.parse_args(argv)


def build(args: argparse.Namespace):
    """The engine thread (not started), the tokenizer and the served model's name."""
    import torch

    from runner.llm import load_model, load_tokenizer, model_name
    from runner.serving.engine import (
        EngineThread,
        LLMEngine,
        PagedLlama,
        ReservingBlockManager,
        StaticBatchScheduler,
    )

    # The learner's file first: a mistake there should not wait for the model to load.
    solution = None if args.scheduler_file is None else load_scheduler_file(args.scheduler_file)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else None
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    name = args.model or model_name()
    model = load_model(name, device=device, dtype=dtype)
    tokenizer = load_tokenizer(name)
    max_model_len = args.max_model_len or model.config.max_position_embeddings
    runner = PagedLlama(
        model, num_blocks=args.num_blocks, block_size=args.block_size, device=device, dtype=dtype
    )
    limits = {
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
    }
    if solution is not None:
        block_manager = solution.BlockManager(args.num_blocks, args.block_size)
        scheduler = solution.Scheduler(block_manager, **limits)
    else:
        block_manager = ReservingBlockManager(args.num_blocks, args.block_size)
        scheduler = StaticBatchScheduler(block_manager, **limits, reserve_tokens=max_model_len)
    eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_id
    engine = LLMEngine(runner, scheduler, eos_token_id=eos_token_id, max_model_len=max_model_len)
    served = args.served_model_name or (Path(name).name if Path(name).is_dir() else name)
    return EngineThread(engine), tokenizer, served


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("runner.serving")
    from runner.serving.openai_server import serve

    try:
        engine_thread, tokenizer, served = build(args)
    except (SchedulerFileError, ValueError) as exc:
        print(f"python -m runner.serving: {exc}", file=sys.stderr)
        return 1
    scheduler = args.scheduler_file or args.scheduler

    def ready(address: str) -> None:
        log.info("serving %s with the %s scheduler at %s", served, scheduler, address)
        print(address, flush=True)

    engine_thread.start()
    try:
        serve(
            engine_thread,
            tokenizer,
            model_name=served,
            host=args.host,
            port=args.port,
            socket_path=args.socket,
            ready=ready,
        )
    except (ValueError, OSError) as exc:  # the address is taken, the path is not a socket...
        print(f"python -m runner.serving: cannot listen: {exc}", file=sys.stderr)
        return 1
    finally:
        engine_thread.stop()
    if engine_thread.failure is not None:
        log.error("the engine had failed: %s", engine_thread.failure.message)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
