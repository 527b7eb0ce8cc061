"""How the serving engine's OpenAI-compatible server answers a connection: read the request
(http1.py), route it, and for a generation submit it to the engine thread and relay its tokens,
as stream chunks or one body (openai_protocol.py says what they contain). Listening, starting
and stopping are in openai_server.py.

    app = OpenAIApp(engine_thread, tokenizer, ServedModel("target", 1024, 4096))
    await asyncio.start_unix_server(app.handle, path=..., limit=http1.MAX_HEAD_BYTES)

The engine thread calls back on its own thread; the callbacks hand each event to the
request's asyncio queue with call_soon_threadsafe. While a request waits for tokens, a second
task reads its connection: end of file there means the client left, and the request is
cancelled in the engine (as it is when a write fails, or when the server stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runner.serving import http1
from runner.serving.openai_protocol import (
    GenerationRequest,
    IncrementalDetokenizer,
    RequestError,
    ResponseBuilder,
    ServedModel,
    error_body,
    parse_generation_request,
)

logger = logging.getLogger(__name__)

CHAT_PROMPT_NOTE = "the messages' contents joined with newlines (no chat template)"

_DISCONNECTED = object()  # put on a request's event queue when its client goes away


@dataclass
class _Exchange:
    """One connection's request and whether its response has begun."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    request: http1.HttpRequest
    started: bool = False

    async def json(self, status: int, body: Any, headers: list[tuple[str, str]] | None = None):
        self.started = True
        await http1.send_json(self.writer, status, body, headers=headers)

    async def error(self, status: int, message: str, *, param: str | None = None, headers=None):
        await self.json(status, error_body(message, status=status, param=param), headers)


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


def _failure_body(failure: Any, *, engine_failed: bool = True) -> tuple[int, dict[str, Any]]:
    """Status and body for an EngineFailure (runner/serving/engine/engine_thread.py): the
    engine's own (500, and it serves no more), or one request's that it could not run (400)."""
    message = getattr(failure, "message", None) or str(failure)
    if not engine_failed:
        return 400, error_body(f"the engine could not run this request: {message}", status=400)
    body = error_body(f"the engine failed and serves no more requests: {message}", status=500)
    trace = getattr(failure, "traceback", None)
    if trace:
        body["error"]["traceback"] = trace
    return 500, body


async def _report_disconnect(reader: asyncio.StreamReader, events: asyncio.Queue) -> None:
    """Put _DISCONNECTED on the queue when the client closes the connection."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(64 * 1024):
            pass  # anything more a client sends (a second request) is not read: one per connection
    events.put_nowait(_DISCONNECTED)


class OpenAIApp:
    """Answers the requests of one connection at a time (`handle`), each its own task."""

    def __init__(self, engine_thread: Any, tokenizer: Any, model: ServedModel) -> None:
        self.engine_thread = engine_thread
        self.tokenizer = tokenizer
        self.model = model
        self.created = int(time.time())
        self.connections: set[asyncio.Task] = set()
        self.routes: dict[str, tuple[str, Callable[[_Exchange], Awaitable[None]]]] = {
            "/health": ("GET", self.health),
            "/v1/models": ("GET", self.models),
            "/v1/completions": ("POST", self.completions),
            "/v1/chat/completions": ("POST", self.chat_completions),
        }

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            # ConnectionError: the client went away while an error was being sent.
            with contextlib.suppress(ConnectionError):
                await self._handle(reader, writer)
            await http1.close_connection(reader, writer)
        except asyncio.CancelledError:  # the server is stopping: no lingering
            writer.close()
            raise
        finally:
            self.connections.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await http1.read_request(reader, writer)
        except http1.ClientGone:
            return
        except http1.HttpError as exc:
            await http1.send_json(writer, exc.status, error_body(exc.message, status=exc.status))
            return
        exchange = _Exchange(reader, writer, request)
        try:
            await self._route(exchange)
        except ConnectionError:
            pass  # the client went away; a generation has been cancelled on the way out
        except Exception:
            logger.exception("the server failed on %s %s", request.method, request.path)
            if not exchange.started:
                await exchange.error(500, "the server failed on this request; see its log")

    async def _route(self, exchange: _Exchange) -> None:
        request = exchange.request
        route = self.routes.get(request.path)
        if route is None:
            known = ", ".join(f"{method} {path}" for path, (method, _) in self.routes.items())
            await exchange.error(404, f"there is no {request.path} here; try {known}")
            return
        method, handler = route
        if request.method != method:
            await exchange.error(
                405,
                f"{request.path} takes {method}, not {request.method}",
                headers=[("Allow", method)],
            )
            return
        await handler(exchange)

    async def health(self, exchange: _Exchange) -> None:
        failure = getattr(self.engine_thread, "failure", None)
        if failure is not None:
            await exchange.json(*_failure_body(failure))
        elif not getattr(self.engine_thread, "is_running", True):
            await exchange.error(503, "the engine thread is not running (stopped or never started)")
        else:
            await exchange.json(200, {"status": "ok"})

    async def models(self, exchange: _Exchange) -> None:
        card = {
            "id": self.model.name,
            "object": "model",
            "created": self.created,
            "owned_by": "inference-roadmap",
            "root": self.model.name,
            "max_model_len": self.model.max_model_len,
            "chat_prompt": CHAT_PROMPT_NOTE,
        }
        await exchange.json(200, {"object": "list", "data": [card]})

    async def completions(self, exchange: _Exchange) -> None:
        await self._generate(exchange, chat=False)

    async def chat_completions(self, exchange: _Exchange) -> None:
        await self._generate(exchange, chat=True)

    async def _generate(self, exchange: _Exchange, *, chat: bool) -> None:
        try:
            request = parse_generation_request(
                exchange.request.body, chat=chat, tokenizer=self.tokenizer, model=self.model
            )
        except RequestError as exc:
            await exchange.error(exc.status, exc.message, param=exc.param)
            return
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_event(event: Any) -> None:
            # Called on the engine's thread; the queue belongs to the server's loop.
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            seq_id = self.engine_thread.submit(
                request.prompt_ids,
                max_tokens=request.max_tokens,
                ignore_eos=request.ignore_eos,
                on_event=on_event,
            )
        except ValueError as exc:  # the engine's own checks of the request
            await exchange.error(400, str(exc))
            return
        except RuntimeError as exc:  # the engine thread is not running
            await exchange.error(503, f"the engine is not running: {exc}")
            return
        watcher = asyncio.create_task(_report_disconnect(exchange.reader, events))
        answered = False
        try:
            if request.stream:
                answered = await self._stream(exchange, request, events)
            else:
                answered = await self._whole(exchange, request, events)
        finally:
            if not answered:
                self.engine_thread.cancel(seq_id)
            watcher.cancel()
            # The watcher must be gone before anything else reads the connection.
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _is_engine_failure(self, event: Any) -> bool:
        return event is getattr(self.engine_thread, "failure", None)

    async def _stream(
        self, exchange: _Exchange, request: GenerationRequest, events: asyncio.Queue
    ) -> bool:
        """Stream the request's tokens; False if the client left before the end."""
        stream = http1.EventStream(exchange.writer, chunked=exchange.request.version == "HTTP/1.1")
        exchange.started = True
        await stream.start()
        reply = ResponseBuilder(request, model_name=self.model.name)
        text = IncrementalDetokenizer(self.tokenizer, request.prompt_ids)
        count = 0
        while True:
            event = await events.get()
            if event is _DISCONNECTED:
                return False
            if getattr(event, "token_id", None) is None:  # an EngineFailure
                _, body = _failure_body(event, engine_failed=self._is_engine_failure(event))
                await stream.send(_dumps(body))
                await stream.end()
                return True
            count += 1
            if request.chat and count == 1:
                # With the first token, as vLLM sends it: a role chunk sent at once would read
                # as the first token to a client that times TTFT by chunks.
                await stream.send(_dumps(reply.role_chunk()))
            finish_reason = event.finish_reason if event.finished else None
            chunk = reply.token_chunk(
                text.add(event.token_id, last=event.finished),
                token_id=event.token_id,
                finish_reason=finish_reason,
                first=count == 1,
            )
            await stream.send(_dumps(chunk))
            if event.finished:
                break
        if request.include_usage:
            await stream.send(_dumps(reply.usage_chunk(count)))
        await stream.send("[DONE]")
        await stream.end()
        return True

    async def _whole(
        self, exchange: _Exchange, request: GenerationRequest, events: asyncio.Queue
    ) -> bool:
        """Answer once every token is in; False if the client left before then."""
        text = IncrementalDetokenizer(self.tokenizer, request.prompt_ids)
        pieces: list[str] = []
        token_ids: list[int] = []
        while True:
            event = await events.get()
            if event is _DISCONNECTED:
                return False
            if getattr(event, "token_id", None) is None:
                await exchange.json(
                    *_failure_body(event, engine_failed=self._is_engine_failure(event))
                )
                return True
            token_ids.append(event.token_id)
            pieces.append(text.add(event.token_id, last=event.finished))
            if event.finished:
                break
        reply = ResponseBuilder(request, model_name=self.model.name)
        body = reply.whole("".join(pieces), token_ids=token_ids, finish_reason=event.finish_reason)
        await exchange.json(200, body)
        return True
