"""One command rebuilds the corpus, the tokenizer, both models and the data card:

    python -m runner.llm.build all                       # CPU or GPU, whichever is here
    python -m runner.llm.build models --device cuda --seconds 150
    python -m runner.llm.build card                      # after copying in GPU-trained weights

Steps: corpus (from this interpreter's standard library), tokenizer (from the corpus's
training split), models (target, then draft, see train.py), card (DATA_CARD.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from runner.llm import card, corpus
from runner.llm import tokenizer as tokenization
from runner.llm.loading import LOCAL_MODELS, WEIGHTS_DIR

STEPS = ("corpus", "tokenizer", "models", "card")


def build_corpus(*, force: bool) -> None:
    if corpus.MANIFEST_PATH.is_file() and not force:
        built_by = json.loads(corpus.MANIFEST_PATH.read_text(encoding="utf-8"))["python"]
        if built_by != platform.python_version():
            raise SystemExit(
                f"the committed corpus comes from Python {built_by}'s standard library; this is "
                f"Python {platform.python_version()}, whose docstrings differ. Train on the "
                "committed corpus (build models), or pass --force to replace it."
            )
    summary = corpus.write_corpus(corpus.collect())
    splits = summary["splits"]
    print(
        f"corpus: {corpus.CORPUS_PATH} ({corpus.CORPUS_PATH.stat().st_size:,} bytes gzip), "
        + ", ".join(
            f"{s} {splits[s]['documents']} docs {splits[s]['text_bytes']:,} B" for s in splits
        )
        + f", sha256 {summary['sha256']}"
    )


def build_tokenizer() -> None:
    documents = corpus.read_corpus()
    trained = tokenization.train_tokenizer(corpus.texts(documents, "train"))
    tokenization.save_tokenizer(trained)
    print(f"tokenizer: {tokenization.TOKENIZER_PATH} (vocabulary {trained.get_vocab_size()})")


def build_models(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from runner.llm.train import TrainingOptions, train_and_save

    for role in ("target", "draft"):
        options = TrainingOptions(
            role=role,
            device=args.device,
            seconds=args.seconds,
            epochs=tuple(float(e) for e in args.epochs.split(",")),
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            warmup_steps=args.warmup_steps,
            evals=args.evals,
        )
        train_and_save(
            options,
            out=LOCAL_MODELS[role],
            command=" ".join(["python -m runner.llm.build", *argv]),
            log=lambda line: print(line, flush=True),
        )


def main(argv: Sequence[str] | None = None) -> int:
    from runner.llm.architecture import TRAIN_SEQ_LEN
    from runner.llm.train import TrainingOptions

    parser = argparse.ArgumentParser(prog="python -m runner.llm.build", description=__doc__)
    parser.add_argument("step", choices=(*STEPS, "all"))
    parser.add_argument("--force", action="store_true", help="rebuild the corpus on any Python")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=150.0, help="budget per model")
    parser.add_argument("--epochs", default="4,8,16,32", help="epoch caps to try")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int, default=TRAIN_SEQ_LEN)
    parser.add_argument("--warmup-steps", type=int, default=TrainingOptions.warmup_steps)
    parser.add_argument("--evals", type=int, default=TrainingOptions.evals)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: its own)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="card: models from")
    parser.add_argument("--card", type=Path, default=card.CARD_PATH, help="card: written to")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    steps = STEPS if args.step == "all" else (args.step,)
    if "corpus" in steps:
        build_corpus(force=args.force)
    if "tokenizer" in steps:
        build_tokenizer()
    if "models" in steps:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        build_models(args, argv)
    if "card" in steps:
        print(f"card: {card.write_card(weights=args.weights, out=args.card)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
