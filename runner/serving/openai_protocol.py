"""The OpenAI-compatible API of the serving engine, without the I/O: what a request may ask for
(checked, with messages written for a learner) and the JSON that goes back, in OpenAI's field
names plus vLLM's `return_token_ids` extension. runner/serving/openai_server.py moves the bytes.

    model = ServedModel(name="target", max_model_len=1024, vocab_size=4096)
    request = parse_generation_request(body, chat=False, tokenizer=tokenizer, model=model)
    reply = ResponseBuilder(request, model_name="target")
    reply.token_chunk("text", token_id=17, finish_reason=None, first=True)

What the requests mean here:
- /v1/completions: `prompt` is a string, tokenized with the model's tokenizer (which puts
  <|endoftext|> first, as the model saw documents start in training), or a list of token ids,
  used as given. One prompt per request.
- /v1/chat/completions: the messages' contents joined with newlines are the prompt. The
  project's models are not chat-tuned and have no chat template, so roles are not marked.
- `max_tokens` defaults to 16 for completions (as OpenAI's) and to the rest of the context for
  chat (as vLLM's; `max_completion_tokens` is its newer name); prompt + max_tokens must fit in
  the model's context (max_model_len).
- Decoding is greedy: `temperature` must be 0 or left out. `ignore_eos` (vLLM's) keeps going
  past the end-of-text token. `stream`, `stream_options.include_usage` and `return_token_ids`
  (each streamed choice carries the `token_ids` of its chunk; the first chunk also carries
  `prompt_token_ids`) work as in vLLM. Options that would change the output but are not
  implemented (n > 1, stop strings, penalties, logprobs, echo) are refused rather than ignored.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

DEFAULT_COMPLETION_MAX_TOKENS = 16
# How many prompt tokens the detokenizer decodes in front of the first output token, as vLLM
# does: some tokenizers (SentencePiece) drop a leading space at the start of the decoded text.
_DETOKENIZE_CONTEXT = 5

# Options this engine does not implement, with the values that mean "not used".
_UNSUPPORTED = {
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "stop": (None, [], ""),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "repetition_penalty": (None, 1),
    "logit_bias": (None, {}),
    "tools": (None, []),
}


class RequestError(Exception):
    """A request the server refuses; `status` is 400 unless said otherwise."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


@dataclass(frozen=True)
class ServedModel:
    name: str  # what clients pass as "model"
    max_model_len: int | None  # prompt + generated tokens; None: not checked here
    vocab_size: int


@dataclass(frozen=True)
class GenerationRequest:
    chat: bool
    prompt_ids: list[int]
    max_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    return_token_ids: bool


def error_body(message: str, *, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object; `code` is the HTTP status, as vLLM sends it."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def parse_generation_request(
    body: bytes, *, chat: bool, tokenizer: Any, model: ServedModel
) -> GenerationRequest:
    fields = _json_object(body)
    requested = fields.get("model")
    if requested is not None and requested != model.name:
        raise RequestError(
            f"the model {requested!r} does not exist; this server serves {model.name!r}",
            param="model",
            status=404,
        )
    for name, accepted in _UNSUPPORTED.items():
        if name in fields and fields[name] not in accepted:
            raise RequestError(
                f"{name}={fields[name]!r} is not supported by this engine; leave it out",
                param=name,
            )
    _check_temperature(fields.get("temperature"))
    if chat:
        prompt_ids = _encode(tokenizer, _chat_text(fields.get("messages")))
    else:
        prompt_ids = _completion_prompt(fields.get("prompt"), tokenizer, model)
    stream = _flag(fields, "stream")
    options = fields.get("stream_options")
    if options is not None and not stream:
        raise RequestError("stream_options is only allowed with stream: true", param="stream")
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options must be an object", param="stream_options")
    include_usage = _flag(options or {}, "include_usage")
    return GenerationRequest(
        chat=chat,
        prompt_ids=prompt_ids,
        max_tokens=_max_tokens(fields, chat=chat, prompt_len=len(prompt_ids), model=model),
        ignore_eos=_flag(fields, "ignore_eos"),
        stream=stream,
        include_usage=include_usage,
        return_token_ids=_flag(fields, "return_token_ids"),
    )


def _json_object(body: bytes) -> dict[str, Any]:
    example = 'such as {"prompt": "Hello", "max_tokens": 16}'
    if not body.strip():
        raise RequestError(f"the request body is empty; send a JSON object {example}")
    try:
        fields = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("the request body is nested too deeply") from None
    if not isinstance(fields, dict):
        raise RequestError(f"the request body must be a JSON object {example}")
    return fields


def _flag(fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, not {value!r}", param=name)
    return value


def _check_temperature(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"temperature must be a number, not {value!r}", param="temperature")
    if value != 0:
        raise RequestError(
            f"this engine decodes greedily: temperature must be 0 or left out (got {value})",
            param="temperature",
        )


def _encode(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: a prompt longer than the tokenizer's model_max_length is refused below
    # with a clearer message than transformers' warning.
    return list(tokenizer.encode(text, verbose=False))


def _completion_prompt(prompt: Any, tokenizer: Any, model: ServedModel) -> list[int]:
    if isinstance(prompt, str):
        return _encode(tokenizer, prompt)
    if not isinstance(prompt, list) or not prompt:
        raise RequestError(
            "prompt must be a string or a non-empty list of token ids (one prompt per request)",
            param="prompt",
        )
    for position, token in enumerate(prompt):
        if isinstance(token, bool) or not isinstance(token, int):
            raise RequestError(
                f"prompt must be a string or a list of token ids; item {position} is "
                f"{token!r} (one prompt per request)",
                param="prompt",
            )
        if not 0 <= token < model.vocab_size:
            raise RequestError(
                f"prompt token {position} is {token}, outside the vocabulary "
                f"(0 to {model.vocab_size - 1})",
                param="prompt",
            )
    return list(prompt)


def _chat_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise RequestError(
            'messages must be a non-empty list such as [{"role": "user", "content": "Hi"}]',
            param="messages",
        )
    texts = []
    for position, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts; only text ones mean anything here
            parts = [part.get("text") if isinstance(part, dict) else None for part in content]
            if all(isinstance(part, str) for part in parts):
                content = "".join(parts)  # type: ignore[arg-type]
        if not isinstance(content, str):
            raise RequestError(
                f"messages[{position}] must be an object whose content is text",
                param="messages",
            )
        texts.append(content)
    return "\n".join(texts)


def _max_tokens(fields: dict[str, Any], *, chat: bool, prompt_len: int, model: ServedModel) -> int:
    name = "max_completion_tokens" if fields.get("max_completion_tokens") is not None else None
    name = name or "max_tokens"
    value = fields.get(name)
    context = model.max_model_len
    if value is None:
        if not chat:
            value = DEFAULT_COMPLETION_MAX_TOKENS
        elif context is not None:
            value = max(context - prompt_len, 1)  # 1: let the check below explain a full context
        else:
            raise RequestError(f"{name} is required by this server", param=name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name} must be a whole number >= 1, not {value!r}", param=name)
    if context is not None and prompt_len + value > context:
        raise RequestError(
            f"the prompt has {prompt_len} tokens and asks for {value} more, but the model's "
            f"context is max_model_len = {context} tokens: shorten the prompt or lower {name}",
            param=name,
        )
    return value


class IncrementalDetokenizer:
    """The text of a growing list of output tokens, one token at a time, as vLLM detokenizes:
    decode a short window of tokens twice, without and with the new tokens, and return what the
    new ones add. A trailing U+FFFD is held back: byte-level BPE splits a multi-byte character
    across tokens, and its first bytes alone decode to U+FFFD until the rest arrive."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-_DETOKENIZE_CONTEXT:])
        self.prefix = 0  # the window starts here
        self.read = len(self.ids)  # text up to here has been returned

    def add(self, token_id: int, *, last: bool) -> str:
        """The new text; with `last`, everything still held back."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not last):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class ResponseBuilder:
    """The bodies of one request's response: stream chunks or the whole non-streaming body."""

    def __init__(self, request: GenerationRequest, *, model_name: str) -> None:
        self.request = request
        self.model_name = model_name
        self.id = f"{'chatcmpl' if request.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model_name,
            "choices": choices,
        }

    def _chunk_kind(self) -> str:
        return "chat.completion.chunk" if self.request.chat else "text_completion"

    def role_chunk(self) -> dict[str, Any]:
        """Chat streams open with the assistant's role and no content, as OpenAI's do."""
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        chunk = self._envelope("chat.completion.chunk", [choice])
        if self.request.return_token_ids:
            chunk["prompt_token_ids"] = self.request.prompt_ids
        return chunk

    def token_chunk(
        self, text: str, *, token_id: int, finish_reason: str | None, first: bool
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.request.chat:
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        if self.request.return_token_ids:
            if first and not self.request.chat:
                choice["prompt_token_ids"] = self.request.prompt_ids
            choice["token_ids"] = [token_id]
        return self._envelope(self._chunk_kind(), [choice])

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any]:
        chunk = self._envelope(self._chunk_kind(), [])
        chunk["usage"] = usage(len(self.request.prompt_ids), completion_tokens)
        return chunk

    def whole(
        self, text: str, *, token_ids: list[int], finish_reason: str | None
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.request.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        kind = "chat.completion" if self.request.chat else "text_completion"
        body = self._envelope(kind, [choice])
        body["usage"] = usage(len(self.request.prompt_ids), len(token_ids))
        if self.request.return_token_ids:
            choice["token_ids"] = list(token_ids)
            holder = body if self.request.chat else choice
            holder["prompt_token_ids"] = self.request.prompt_ids
        return body
