"""A byte-level BPE tokenizer trained with the `tokenizers` library on the corpus's training
split, and its `transformers` wrapper (what every model folder carries).

One special token, <|endoftext|>, separates documents and also starts every encoded text (as
GPT-2 uses it), so the model sees the same "a document begins" context in training,
evaluation and generation; a separate <|pad|> keeps padding distinguishable from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from runner.llm.corpus import DATA_DIR

TOKENIZER_PATH = DATA_DIR / "tokenizer.json"
VOCAB_SIZE = 4096
EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOS, PAD)  # ids 0 and 1


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte is in the vocabulary, so no text is ever out of vocabulary.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B", special_tokens=[(EOS, eos_id)]
    )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: Path = TOKENIZER_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))


def load_tokenizer(path: Path = TOKENIZER_PATH) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def pretrained_tokenizer(tokenizer: Tokenizer | None = None, *, max_length: int = 1024):
    """The tokenizer as `transformers` wants it, so AutoTokenizer.from_pretrained(model
    folder) gives the same ids as `tokenizer`."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer or load_tokenizer(),
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def save_pretrained_tokenizer(tokenizer: Tokenizer, folder: Path, *, max_length: int) -> None:
    pretrained_tokenizer(tokenizer, max_length=max_length).save_pretrained(folder)
    # transformers 5 records its own class name (TokenizersBackend), which 4.x lacks; the
    # name both read is PreTrainedTokenizerFast.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    """One stream: <|endoftext|> before every document and one at the end, so the model
    learns both how documents start and that they end."""
    stream: list[int] = []
    for encoding in tokenizer.encode_batch(texts):  # the template adds the leading EOS
        stream.extend(encoding.ids)
    stream.append(tokenizer.token_to_id(EOS))
    return stream
