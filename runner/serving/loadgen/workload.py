"""What the harness sends: `RequestSpec` (one request of a workload), the JSON bodies for
`/v1/completions` and `/v1/chat/completions`, and two workloads: random prompts of a given
length and a JSONL file.

Every body streams (`stream: true`) with usage at the end (`stream_options.include_usage`),
decodes greedily (`temperature: 0`, so outputs can be compared token for token) and asks for
the generated token ids (vLLM's `return_token_ids`; our engine streams `token_ids` per choice
per chunk, which counts output tokens exactly). `ignore_eos` (vLLM and SGLang) makes a
request run to `max_tokens`, so every run does the same work. A server that rejects these
extensions can be given `extra={"return_token_ids": None}`: a None in `extra` removes a key.

The random workload needs no tokenizer: a prompt of N "words" drawn from common English
words that most BPE tokenizers (Llama, GPT, ours) encode as one token each with their
leading space, so N words are about N tokens. The server's usage.prompt_tokens, where it
reports it, replaces that estimate in the results.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Short, frequent words: one token each (with the leading space) in common BPE vocabularies.
_VOCABULARY = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we can has been if more when "
    "will would who so no out up into do than time some could them only other new about "
    "its then first also any after like these two may well way my our over such even most "
    "made many before must where much your through back years should people work state "
    "day world year"
)


@dataclass(frozen=True)
class RequestSpec:
    """One request: a text prompt (or token ids, completions API only), the number of tokens
    to generate, and `extra` body fields. `prompt_len` is the prompt's length in tokens when
    the workload knows it; otherwise the token ids are counted, or the words of a text."""

    prompt: str | list[int]
    max_tokens: int
    ignore_eos: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)
    prompt_len: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ValueError(f"max_tokens must be a whole number, not {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if isinstance(self.prompt, str):
            if not self.prompt:
                raise ValueError("the prompt is empty")
        elif not (
            isinstance(self.prompt, list)
            and self.prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in self.prompt)
        ):
            raise ValueError("a prompt is a non-empty string or a non-empty list of token ids")
        if self.prompt_len is not None and (
            isinstance(self.prompt_len, bool)
            or not isinstance(self.prompt_len, int)
            or self.prompt_len < 0
        ):
            raise ValueError(f"prompt_len must be a whole number, not {self.prompt_len!r}")

    @property
    def tokens(self) -> int:
        """The prompt length to report when the server does not say."""
        if self.prompt_len is not None:
            return self.prompt_len
        return len(self.prompt) if isinstance(self.prompt, list) else len(self.prompt.split())


def request_body(spec: RequestSpec, *, api: str, model: str) -> dict[str, Any]:
    """The JSON body of a streaming request for `api` "completions" or "chat"."""
    body: dict[str, Any] = {"model": model}
    if api == "completions":
        body["prompt"] = spec.prompt
        body["max_tokens"] = spec.max_tokens
    elif api == "chat":
        if not isinstance(spec.prompt, str):
            raise ValueError(
                "the chat API takes text: give a string prompt, or use the completions API "
                "for token ids"
            )
        body["messages"] = [{"role": "user", "content": spec.prompt}]
        # What vLLM's benchmark sends; vLLM and SGLang also accept the older max_tokens.
        body["max_completion_tokens"] = spec.max_tokens
    else:
        raise ValueError(f"api must be 'completions' or 'chat', not {api!r}")
    body.update(
        {
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
        }
    )
    if spec.ignore_eos:
        body["ignore_eos"] = True
    body.update(spec.extra)
    return {key: value for key, value in body.items() if value is not None}


def random_requests(
    count: int,
    *,
    input_len: int,
    output_len: int,
    seed: int = 0,
    ignore_eos: bool = True,
) -> list[RequestSpec]:
    """`count` prompts of `input_len` random common words (about one token each, see the
    module docstring), each asking for `output_len` tokens. The same seed gives the same
    prompts."""
    if count < 1 or input_len < 1 or output_len < 1:
        raise ValueError("count, input_len and output_len must each be at least 1")
    rng = np.random.default_rng(seed)
    words = np.asarray(_VOCABULARY.split())
    return [
        RequestSpec(
            prompt=" ".join(rng.choice(words, size=input_len)),
            max_tokens=output_len,
            ignore_eos=ignore_eos,
            prompt_len=input_len,
        )
        for _ in range(count)
    ]


def load_jsonl(
    path: str | Path,
    *,
    default_max_tokens: int,
    limit: int | None = None,
    ignore_eos: bool = True,
) -> list[RequestSpec]:
    """One request per line: {"prompt": "text" or [token ids], "max_tokens": 64}; a line
    without max_tokens asks for `default_max_tokens`. Blank lines are skipped."""
    specs = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "prompt" not in record:
                    raise ValueError('each line must be an object with a "prompt"')
                specs.append(
                    RequestSpec(
                        prompt=record["prompt"],
                        max_tokens=record.get("max_tokens", default_max_tokens),
                        ignore_eos=ignore_eos,
                        prompt_len=record.get("prompt_len"),
                    )
                )
            except ValueError as exc:
                raise ValueError(f"{path}, line {number}: {exc}") from None
            if limit is not None and len(specs) >= limit:
                break
    if not specs:
        raise ValueError(f"{path} holds no requests")
    return specs
