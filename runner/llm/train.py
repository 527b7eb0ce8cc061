"""Train one of the project's models on the committed corpus and save it with
save_pretrained (safetensors, bf16), plus a training.json of what happened.

    python -m runner.llm.train --role target --out runner/llm/weights/target \
        --device cuda --seconds 150 --epochs 4,8,16,32

A plain PyTorch loop: AdamW, linear warm-up then cosine decay, bf16 autocast on CUDA, a fixed
seed. Bounded by wall clock (and by an epoch cap, since the corpus is small enough to
memorise): the schedule follows whichever of the two is further along. With several epoch
caps (--epochs 4,8,16) the time is split between runs and the one with the lowest loss on
the validation split is kept; the held-out split is evaluated only once, on the saved
weights, so the perplexity it gives is not tuned on.

Needs only torch, transformers, tokenizers and safetensors (the GPU node has no Django).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from runner.llm import architecture, corpus
from runner.llm import tokenizer as tokenization

SUMMARY_NAME = "training.json"
LOG_POINTS = 50  # loss-curve points per run
Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainingOptions:
    role: str = "target"
    device: str = "auto"
    seconds: float = 60.0
    # Epoch caps to try; the time is split between them (see the module docstring).
    epochs: tuple[float, ...] = (16.0,)
    batch_size: int | None = None  # None: 32 on CUDA, 8 on CPU
    seq_len: int = architecture.TRAIN_SEQ_LEN
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    evals: int = 10  # validation passes per run (the best one is kept)
    corpus_path: Path = corpus.CORPUS_PATH
    tokenizer_path: Path = tokenization.TOKENIZER_PATH


@dataclass
class Data:
    tokenizer: Any
    streams: dict[str, torch.Tensor]
    corpus_sha256: str
    tokenizer_sha256: str


@dataclass
class Run:
    max_epochs: float
    state: dict[str, torch.Tensor]  # the best validation checkpoint, on the CPU
    best_valid_loss: float
    best_step: int
    steps: int = 0
    tokens_seen: int = 0
    seconds: float = 0.0
    stopped_by: str = ""
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    valid_curve: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_data(options: TrainingOptions) -> Data:
    # The GPU node must train on exactly the committed text: check it against its manifest.
    corpus.verify_corpus(options.corpus_path)
    documents = corpus.read_corpus(options.corpus_path)
    tokenizer = tokenization.load_tokenizer(options.tokenizer_path)
    streams = {
        split: torch.tensor(
            tokenization.encode_documents(tokenizer, corpus.texts(documents, split)),
            dtype=torch.long,
        )
        for split in corpus.SPLITS
    }
    return Data(
        tokenizer=tokenizer,
        streams=streams,
        corpus_sha256=corpus.corpus_sha256(options.corpus_path),
        tokenizer_sha256=sha256_file(options.tokenizer_path),
    )


def new_model(role: str, tokenizer, device: torch.device):
    from transformers import AutoModelForCausalLM

    config = architecture.llama_config(
        role=role,
        vocab_size=tokenizer.get_vocab_size(),
        eos_token_id=tokenizer.token_to_id(tokenization.EOS),
        pad_token_id=tokenizer.token_to_id(tokenization.PAD),
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)


def random_batch(
    stream: torch.Tensor, *, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows at random offsets of the packed training stream (inputs, next tokens)."""
    starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=generator)
    windows = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def next_token_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def mean_loss(
    model,
    stream: torch.Tensor,
    *,
    seq_len: int,
    device: torch.device,
    autocast: bool = False,
    max_tokens: int | None = None,
    batch_size: int = 16,
) -> float:
    """Mean next-token negative log-likelihood (nats) over consecutive windows of the
    stream, each predicted from the start of its own window."""
    was_training = model.training
    model.eval()
    if max_tokens is not None:
        stream = stream[: max_tokens + 1]
    total, count = 0.0, 0
    windows = [stream[i : i + seq_len + 1] for i in range(0, len(stream) - 1, seq_len)]
    # Equal lengths batch together; the last, shorter window goes alone.
    for length in sorted({len(w) for w in windows}, reverse=True):
        same = [w for w in windows if len(w) == length]
        for i in range(0, len(same), batch_size):
            chunk = torch.stack(same[i : i + batch_size]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(input_ids=chunk[:, :-1]).logits
            nll = F.cross_entropy(
                logits.float().flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"
            )
            total += float(nll)
            count += chunk[:, 1:].numel()
    model.train(was_training)
    return total / count


def lr_factor(*, step: int, progress: float, warmup_steps: int, min_ratio: float) -> float:
    warmup = min(1.0, (step + 1) / max(1, warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return warmup * (min_ratio + (1 - min_ratio) * cosine)


def make_optimizer(model, options: TrainingOptions) -> torch.optim.Optimizer:
    # Decay matrices only: norms' gains shrinking towards zero helps nothing.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    keep = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": options.weight_decay},
            {"params": keep, "weight_decay": 0.0},
        ],
        lr=options.lr,
        betas=(0.9, 0.95),
    )


def train_once(
    options: TrainingOptions,
    data: Data,
    *,
    max_epochs: float,
    seconds: float,
    device: torch.device,
    log: Log = print,
) -> Run:
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    model = new_model(options.role, data.tokenizer, device)
    model.train()
    optimizer = make_optimizer(model, options)
    batch_size = batch_size_for(options, device)
    train = data.streams["train"]
    tokens_per_step = batch_size * options.seq_len
    token_cap = max_epochs * len(train)
    autocast = device.type == "cuda"
    evals = max(1, options.evals)

    def evaluate() -> float:
        return mean_loss(
            model, data.streams["valid"], seq_len=options.seq_len, device=device, autocast=autocast
        )

    run = Run(max_epochs=max_epochs, state={}, best_valid_loss=math.inf, best_step=0)
    # Progress marks for the next validation and the next loss-curve point. After a slow
    # evaluation (on a CPU) progress may jump past several marks: the next is the one after.
    next_eval = 1.0 / evals
    window: list[float] = []
    next_log = 0.0
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        progress = max(elapsed / seconds, run.tokens_seen / token_cap)
        if progress >= next_eval or progress >= 1.0:
            valid = evaluate()
            run.valid_curve.append(
                {"step": run.steps, "seconds": round(elapsed, 2), "valid_loss": valid}
            )
            if valid < run.best_valid_loss:
                run.best_valid_loss, run.best_step = valid, run.steps
                run.state = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
            log(f"  step {run.steps:5d}  {elapsed:6.1f} s  valid loss {valid:.4f}")
            next_eval = (math.floor(progress * evals) + 1) / evals
        if progress >= 1.0:
            run.stopped_by = "time" if elapsed / seconds >= 1.0 else "epochs"
            break

        factor = lr_factor(
            step=run.steps,
            progress=progress,
            warmup_steps=options.warmup_steps,
            min_ratio=options.min_lr_ratio,
        )
        for group in optimizer.param_groups:
            group["lr"] = options.lr * factor
        inputs, targets = random_batch(
            train, batch_size=batch_size, seq_len=options.seq_len, generator=generator
        )
        inputs, targets = inputs.to(device), targets.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = next_token_loss(model, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
        optimizer.step()
        run.steps += 1
        run.tokens_seen += tokens_per_step
        window.append(float(loss.detach()))  # a sync per step: fine at this size
        if progress >= next_log:
            point = {
                "step": run.steps,
                "seconds": round(time.perf_counter() - start, 2),
                "tokens": run.tokens_seen,
                "loss": sum(window) / len(window),
                "lr": options.lr * factor,
            }
            run.loss_curve.append(point)
            log(
                f"  step {run.steps:5d}  {point['seconds']:6.1f} s  loss {point['loss']:.4f}"
                f"  lr {point['lr']:.2e}"
            )
            window = []
            next_log = (math.floor(progress * LOG_POINTS) + 1) / LOG_POINTS
    run.seconds = round(time.perf_counter() - start, 2)
    if not run.state:
        raise RuntimeError(
            f"training diverged: validation loss {run.valid_curve[-1]['valid_loss']}"
        )
    return run


def batch_size_for(options: TrainingOptions, device: torch.device) -> int:
    return options.batch_size or (32 if device.type == "cuda" else 8)


def train_and_save(
    options: TrainingOptions, *, out: Path, command: str | None = None, log: Log = print
) -> dict[str, Any]:
    """Train (one run per epoch cap), save the best run's weights and tokenizer into `out`,
    reload them with from_pretrained and evaluate the held-out split. Returns the summary
    that is also written to out/training.json."""
    from transformers import GenerationConfig
    from transformers.utils import logging as transformers_logging

    from runner.llm.loading import load_model

    transformers_logging.disable_progress_bar()

    device = resolve_device(options.device)
    data = prepare_data(options)
    log(
        f"{options.role}: {len(data.streams['train'])} training tokens, "
        f"{len(data.streams['heldout'])} held-out, on {device_name(device)}"
    )
    torch.manual_seed(options.seed)
    untrained = new_model(options.role, data.tokenizer, device)
    init_loss = mean_loss(
        untrained, data.streams["heldout"], seq_len=options.seq_len, device=device
    )
    parameters = architecture.parameter_count(untrained)
    del untrained

    runs = []
    seconds_each = options.seconds / len(options.epochs)
    for max_epochs in options.epochs:
        log(f"run: at most {max_epochs:g} epochs or {seconds_each:.0f} s")
        runs.append(
            train_once(
                options,
                data,
                max_epochs=max_epochs,
                seconds=seconds_each,
                device=device,
                log=log,
            )
        )
    best = min(runs, key=lambda r: r.best_valid_loss)

    model = new_model(options.role, data.tokenizer, torch.device("cpu"))
    model.load_state_dict(best.state)
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        do_sample=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenization.save_pretrained_tokenizer(
        data.tokenizer, out, max_length=architecture.MAX_POSITIONS
    )
    if not (out / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained wrote no model.safetensors in {out}")

    saved = load_model(str(out), device=str(device))  # float32 compute of the bf16 weights
    heldout_loss = mean_loss(saved, data.streams["heldout"], seq_len=options.seq_len, device=device)
    valid_loss = mean_loss(saved, data.streams["valid"], seq_len=options.seq_len, device=device)
    summary = {
        "format": "inference-roadmap-training",
        "version": 1,
        "role": options.role,
        "architecture": "LlamaForCausalLM",
        "shape": architecture.SHAPES[options.role],
        "vocab_size": data.tokenizer.get_vocab_size(),
        "parameters": parameters,
        "stored_dtype": "bfloat16",
        "weights_bytes": (out / "model.safetensors").stat().st_size,
        "corpus_sha256": data.corpus_sha256,
        "tokenizer_sha256": data.tokenizer_sha256,
        "tokens": {split: len(stream) for split, stream in data.streams.items()},
        "options": {
            **{k: v for k, v in asdict(options).items() if not k.endswith("_path")},
            "batch_size": batch_size_for(options, device),
        },
        "runs": [
            {
                "max_epochs": r.max_epochs,
                "steps": r.steps,
                "tokens_seen": r.tokens_seen,
                "epochs_seen": r.tokens_seen / len(data.streams["train"]),
                "seconds": r.seconds,
                "stopped_by": r.stopped_by,
                "best_step": r.best_step,
                "best_valid_loss": r.best_valid_loss,
                "loss_curve": r.loss_curve,
                "valid_curve": r.valid_curve,
            }
            for r in runs
        ],
        "chosen_run": runs.index(best),
        "steps": best.best_step,
        "tokens_seen": best.best_step * batch_size_for(options, device) * options.seq_len,
        "heldout": {
            "loss_at_init": init_loss,
            "perplexity_at_init": math.exp(init_loss),
            "loss": heldout_loss,
            "perplexity": math.exp(heldout_loss),
        },
        "valid": {"loss": valid_loss, "perplexity": math.exp(valid_loss)},
        "command": command,
        "machine": describe_machine(device),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log(
        f"{options.role}: saved to {out}; held-out perplexity {math.exp(init_loss):.1f} at init, "
        f"{math.exp(heldout_loss):.2f} trained (run {runs.index(best)}, step {best.best_step})"
    )
    return summary


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from runner.environment import describe_cpu

    return describe_cpu()["model"]


def describe_machine(device: torch.device) -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "device": device.type,
        "device_name": device_name(device),
        "node": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": version("transformers"),
        "tokenizers": version("tokenizers"),
        "safetensors": version("safetensors"),
    }


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainingOptions, Path, int | None]:
    parser = argparse.ArgumentParser(prog="python -m runner.llm.train", description=__doc__)
    parser.add_argument("--role", choices=architecture.ROLES, default="target")
    parser.add_argument("--out", type=Path, required=True, help="folder for the saved model")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, help="wall-clock budget (default 60)")
    budget.add_argument("--minutes", type=float, help="wall-clock budget in minutes")
    parser.add_argument(
        "--epochs", default="16", help="epoch cap, or several (4,8,16) to try and keep the best"
    )
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int, default=architecture.TRAIN_SEQ_LEN)
    parser.add_argument("--lr", type=float, default=TrainingOptions.lr)
    parser.add_argument("--warmup-steps", type=int, default=TrainingOptions.warmup_steps)
    parser.add_argument("--evals", type=int, default=TrainingOptions.evals)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: its own)")
    parser.add_argument("--corpus", type=Path, default=corpus.CORPUS_PATH)
    parser.add_argument("--tokenizer", type=Path, default=tokenization.TOKENIZER_PATH)
    args = parser.parse_args(argv)
    seconds = args.minutes * 60 if args.minutes is not None else (args.seconds or 60.0)
    options = TrainingOptions(
        role=args.role,
        device=args.device,
        seconds=seconds,
        epochs=tuple(float(e) for e in args.epochs.split(",")),
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        evals=args.evals,
        seed=args.seed,
        corpus_path=args.corpus,
        tokenizer_path=args.tokenizer,
    )
    return options, args.out, args.threads


def main(argv: Sequence[str] | None = None) -> int:
    options, out, threads = parse_args(argv)
    if threads:
        torch.set_num_threads(threads)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m runner.llm.train", *argv])
    train_and_save(options, out=out, command=command, log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
