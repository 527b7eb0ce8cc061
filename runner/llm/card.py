"""The data card (markdown), written from what the build measured: the corpus manifest and
each model's training.json. Nothing in it is typed by hand, so it cannot drift from the
committed artefacts; rewrite it with `python -m runner.llm.build card`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.llm import corpus
from runner.llm import tokenizer as tokenization
from runner.llm.loading import WEIGHTS_DIR
from runner.llm.train import SUMMARY_NAME

CARD_PATH = Path(__file__).resolve().parent / "DATA_CARD.md"
REBUILD = "python -m runner.llm.build all"
GPU_REBUILD = "bench/train_models_gpu.sh"


def read_summaries(weights: Path = WEIGHTS_DIR) -> dict[str, dict[str, Any]]:
    return {
        role: json.loads((weights / role / SUMMARY_NAME).read_text(encoding="utf-8"))
        for role in ("target", "draft")
        if (weights / role / SUMMARY_NAME).is_file()
    }


def render_card(
    *, manifest: dict[str, Any], summaries: dict[str, dict[str, Any]], tokenizer_sha256: str
) -> str:
    splits = manifest["splits"]
    any_summary = next(iter(summaries.values()), {})
    tokens = any_summary.get("tokens", {})
    lines = [
        "# Data card: the project's own small Llama models",
        "",
        "Two small causal language models with a real Llama architecture (`LlamaForCausalLM`),",
        "trained by this repository on text it collects offline, so that the quantization,",
        "serving and speculative-decoding labs have trained weights without a model hub.",
        "They are toys: good enough to measure perplexity, KL divergence, top-1 agreement and",
        "draft acceptance on, far too small to be useful as language models. Speed at",
        "realistic sizes is measured on randomly initialised weights of large Llama shapes;",
        "quality is always measured on these trained weights.",
        "",
        "## Corpus",
        "",
        "- **What**: every module, class and function docstring of the standard library of",
        f"  CPython {manifest['python']} (the interpreter that built it),",
        "  read with `ast` (nothing imported), test suites and site-packages left out, plus",
        "  the reference-manual sections that `help()` shows (`pydoc_data.topics`).",
        "  Sorted walk, documents in source order, cleaned with `inspect.cleandoc` rules,",
        f"  shorter than {manifest['min_chars']} characters dropped, exact duplicates dropped.",
        f"- **Licence**: {manifest['licence']} (the text is CPython's).",
        "- **Split**: by a SHA-256 hash of each document's module (or topic) name:",
        f"  {manifest['heldout_percent']}% held out (evaluated once, on the saved weights),",
        f"  {manifest['valid_percent']}% validation (picks the checkpoint), the rest training.",
        "  A module's docstrings are all in one split.",
        "- **File**: `runner/llm/data/corpus.jsonl.gz` (committed; models are trained on",
        "  exactly this file, also on the GPU node, which has another Python: the training",
        "  script checks its hash against `corpus.json`).",
        f"- **SHA-256** of the uncompressed JSON lines: `{manifest['sha256']}`",
        "",
        "| split | documents | modules or topics | text bytes | tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for split in corpus.SPLITS:
        row = splits[split]
        lines.append(
            f"| {split} | {row['documents']:,} | {row['units']:,} | {row['text_bytes']:,} "
            f"| {tokens.get(split, 0):,} |"
        )
    lines += [
        "",
        "## Tokenizer",
        "",
        "Byte-level BPE trained with `tokenizers` on the training split, vocabulary",
        f"{any_summary.get('vocab_size', tokenization.VOCAB_SIZE):,}, special tokens",
        f"`{tokenization.EOS}` (id 0: starts every text and ends every document) and",
        f"`{tokenization.PAD}` (id 1). Every byte is in the vocabulary, so any text encodes",
        "and decodes back exactly. File `runner/llm/data/tokenizer.json`, SHA-256",
        f"`{tokenizer_sha256}`; each model folder carries the same tokenizer.",
        "",
        "## Models",
        "",
    ]
    if not summaries:
        lines += ["Not trained yet: run the command below.", ""]
    for role, s in summaries.items():
        shape = s["shape"]
        chosen = s["runs"][s["chosen_run"]]
        caps = ", ".join(f"{r['max_epochs']:g}" for r in s["runs"])
        machine = s["machine"]
        lines += [
            f"### {role} (`runner/llm/weights/{role}/`)",
            "",
            "| | |",
            "|---|---|",
            f"| architecture | {s['architecture']}: {shape['num_hidden_layers']} layers, hidden "
            f"{shape['hidden_size']}, {shape['num_attention_heads']} heads, "
            f"{shape['num_key_value_heads']} key/value heads (GQA), MLP "
            f"{shape['intermediate_size']}, vocabulary {s['vocab_size']:,}, tied embeddings |",
            f"| parameters | {s['parameters']:,} |",
            f"| weights | {s['stored_dtype']} safetensors, {s['weights_bytes']:,} bytes |",
            f"| trained on | {machine['device_name']} ({machine['device']}), {s['date']} |",
            f"| software | Python {machine['python']}, torch {machine['torch']}, transformers "
            f"{machine['transformers']}, tokenizers {machine['tokenizers']} |",
            f"| schedule | AdamW, lr {s['options']['lr']:g}, warm-up "
            f"{s['options']['warmup_steps']} steps then cosine, batch "
            f"{s['options']['batch_size']} x {s['options']['seq_len']} tokens, seed "
            f"{s['options']['seed']}, budget {s['options']['seconds']:g} s |",
            f"| runs tried | epoch caps {caps}; kept the one with cap {chosen['max_epochs']:g} |",
            f"| kept checkpoint | step {s['steps']:,} of {chosen['steps']:,}, "
            f"{s['tokens_seen']:,} tokens seen "
            f"({s['tokens_seen'] / max(1, s['tokens']['train']):.1f} epochs) |",
            f"| held-out perplexity | **{s['heldout']['perplexity']:.2f}** "
            f"(untrained: {s['heldout']['perplexity_at_init']:.0f}) |",
            f"| validation perplexity | {s['valid']['perplexity']:.2f} |",
            f"| command | `{s['command'] or REBUILD}` |",
            "",
        ]
    lines += [
        "Perplexity is exp of the mean next-token loss over the split's token stream, cut",
        "into consecutive windows of the training length, computed in float32 from the",
        "saved bf16 weights after reloading them with `from_pretrained`.",
        "",
        "## Rebuild",
        "",
        f"- Everything, on this kind of machine: `{REBUILD}` (corpus, tokenizer, both",
        "  models, this card). Rebuilding the corpus on another Python version changes it,",
        "  so `build corpus` refuses unless `--force`.",
        f"- The models on a GPU node, from the committed corpus and tokenizer: `{GPU_REBUILD}`;",
        "  copy its `target/` and `draft/` into `runner/llm/weights/` and run",
        "  `python -m runner.llm.build card`.",
        "",
    ]
    return "\n".join(lines)


def write_card(
    *,
    weights: Path = WEIGHTS_DIR,
    out: Path = CARD_PATH,
    manifest_path: Path = corpus.MANIFEST_PATH,
    tokenizer_path: Path = tokenization.TOKENIZER_PATH,
) -> Path:
    from runner.llm.train import sha256_file

    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    text = render_card(
        manifest=manifest,
        summaries=read_summaries(weights),
        tokenizer_sha256=sha256_file(tokenizer_path),
    )
    out.write_text(text, encoding="utf-8")
    return out
