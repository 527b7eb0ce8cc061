"""How one streamed OpenAI-compatible completion becomes a `RequestOutput`: the timing rules
of vLLM's benchmark client, with no I/O, so that the asyncio harness (run.py) and the Locust
user (bench/locustfile.py) measure the same way.

Feed it the `data` of each Server-Sent Event with the perf_counter time it arrived:

    timer = StreamTimer(api="completions", start=time.perf_counter())
    for data in events:                       # from SSEDecoder / iter_sse
        if timer.on_data(data, time.perf_counter()):
            break                             # [DONE]
    output = timer.finish(prompt_len=spec.tokens)

Synchronous clients (the Locust user) hand the raw body pieces to `time_stream`.

As in vLLM, a chunk counts when its `choices` list is non-empty (even if its text is empty,
e.g. a chat stream's first chunk that only carries the role): the first such chunk gives
TTFT, each later one an ITL gap, and the last one the end-to-end latency. The usage-only
chunk at the end carries no choice and moves no clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from runner.serving.loadgen.http import ProtocolError
from runner.serving.loadgen.metrics import RequestOutput
from runner.serving.loadgen.sse import SSEDecoder

APIS = ("completions", "chat")


class ServerReportedError(Exception):
    """The stream carried an `error` object instead of tokens."""


class StreamTimer:
    def __init__(self, *, api: str, start: float):
        if api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}, not {api!r}")
        self.api = api
        self.start = start
        self.done = False
        self._events = 0
        self._first: float | None = None
        self._last = start
        self._itl: list[float] = []
        self._text: list[str] = []
        self._content_chunks = 0
        self._token_ids: list[int] | None = None
        self._usage_output: int | None = None
        self._usage_prompt: int | None = None

    def on_data(self, data: str, now: float) -> bool:
        """Take one event's data; True once it was `[DONE]`."""
        self._events += 1
        if data == "[DONE]":
            self.done = True
            return True
        if self.done:
            raise ProtocolError("an event arrived after `data: [DONE]`")
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ProtocolError(f"event {self._events} is not JSON: {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise ProtocolError(f"event {self._events} is not a JSON object: {data[:80]!r}")
        if chunk.get("error") is not None:
            raise ServerReportedError(f"the server streamed an error: {_error_text(chunk)}")
        choices = chunk.get("choices")
        if choices:
            self._on_choice(choices, now)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage_output = _count(usage.get("completion_tokens"))
            self._usage_prompt = _count(usage.get("prompt_tokens"))
        return False

    def _on_choice(self, choices: Any, now: float) -> None:
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise ProtocolError(f"event {self._events}: `choices` is not a list of objects")
        choice = choices[0]
        if self.api == "chat":
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = choice.get("text")
        if text is not None and not isinstance(text, str):
            raise ProtocolError(f"event {self._events}: the generated text is not a string")
        if self._first is None:
            self._first = now
        else:
            self._itl.append(now - self._last)
        self._last = now
        if text:
            self._text.append(text)
            self._content_chunks += 1
        ids = choice.get("token_ids")
        if ids is not None:
            if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids
            ):
                raise ProtocolError(f"event {self._events}: `token_ids` is not a list of ints")
            self._token_ids = (self._token_ids or []) + ids

    def finish(self, *, prompt_len: int = 0) -> RequestOutput:
        """The measured request; raises ProtocolError when the stream did not complete."""
        if self._first is None:
            raise ProtocolError("the stream ended before any token arrived")
        if not self.done:
            raise ProtocolError("the stream ended without `data: [DONE]`")
        if self._token_ids is not None:
            count, source = len(self._token_ids), "token_ids"
        elif self._usage_output is not None:
            count, source = self._usage_output, "usage"
        else:
            count, source = self._content_chunks, "chunks"
        return RequestOutput(
            success=True,
            ttft_s=self._first - self.start,
            itl_s=self._itl,
            e2el_s=self._last - self.start,
            prompt_tokens=self._usage_prompt if self._usage_prompt is not None else prompt_len,
            output_tokens=count,
            output_tokens_from=source,
            generated_text="".join(self._text),
            token_ids=self._token_ids,
            start_time=self.start,
        )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _error_text(chunk: dict[str, Any]) -> str:
    error = chunk["error"]
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error)[:300]


def time_stream(
    pieces: Iterable[bytes],
    *,
    api: str,
    start: float,
    prompt_len: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> RequestOutput:
    """Time a streamed body read by a synchronous client (e.g. requests'
    `response.iter_content(chunk_size=None)`), from `start`, the `clock` reading taken just
    before the request was sent. Stops reading at `[DONE]`; raises like StreamTimer."""
    timer = StreamTimer(api=api, start=start)
    decoder = SSEDecoder()
    for piece in pieces:
        for data in decoder.feed(piece):
            if timer.on_data(data, clock()):
                return timer.finish(prompt_len=prompt_len)
    for data in decoder.close():
        timer.on_data(data, clock())
    return timer.finish(prompt_len=prompt_len)
