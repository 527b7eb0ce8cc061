"""A tiny OpenAI-compatible streaming server for the load harness tests (stdlib asyncio).

It listens on TCP (port 0: the system picks) or on a Unix socket, streams `tokens` tokens
(default: the request's max_tokens) after `ttft_s`, one every `itl_s`, with token_ids and a
final usage chunk as vLLM does, and can misbehave on purpose (`mode`):

    ok                 Connection: close, the body runs to the end of the connection
    chunked            the same stream in Transfer-Encoding: chunked
    hang               reads the request, never answers
    close_mid_stream   two tokens, half an event, then closes the connection
    malformed          an event whose data is not JSON
    http_500           HTTP 500 with a JSON error body
    stream_error       an `error` object in the stream, as vLLM sends when generation fails
    not_http           answers something that is not HTTP

A request may override the server's behaviour with a "fake" object in its body (the
harness passes RequestSpec.extra through), so one run can mix good and bad requests.
The server counts requests in flight and remembers the peak and every body it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Behaviour:
    mode: str = "ok"
    ttft_s: float = 0.0
    itl_s: float = 0.0
    tokens: int | None = None
    token_ids: bool = True
    usage: bool = True


class FakeOpenAIServer:
    def __init__(
        self, behaviour: Behaviour | None = None, *, unix_path: str | None = None, port: int = 0
    ):
        self.behaviour = behaviour or Behaviour()
        self.unix_path = unix_path
        self.port = port
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self.base_url = ""

    async def start(self) -> FakeOpenAIServer:
        if self.unix_path:
            self._server = await asyncio.start_unix_server(self._handle, path=self.unix_path)
            self.base_url = f"unix://{self.unix_path}"
        else:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            port = self._server.sockets[0].getsockname()[1]
            self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def __aenter__(self) -> FakeOpenAIServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            if method == "GET" and path == "/v1/models":
                await self._json(writer, 200, {"object": "list", "data": [{"id": "fake"}]})
                return
            request = json.loads(body)
            self.bodies.append(request)
            behaviour = replace(self.behaviour, **request.get("fake", {}))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                await self._answer(
                    writer, request, behaviour, chat=path.endswith("chat/completions")
                )
            finally:
                self.in_flight -= 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or close() stopped a request that hangs on purpose
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _json(self, writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        reason = {200: "OK", 500: "Internal Server Error"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    async def _answer(
        self, writer: asyncio.StreamWriter, request: dict, behaviour: Behaviour, *, chat: bool
    ) -> None:
        mode = behaviour.mode
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "http_500":
            await self._json(writer, 500, {"error": {"message": "the engine crashed"}})
            return
        if mode == "not_http":
            writer.write(b"hello there\r\n\r\n")
            await writer.drain()
            return
        chunked = mode == "chunked"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
            + (b"Transfer-Encoding: chunked\r\n" if chunked else b"")
            + b"\r\n"
        )

        async def send(raw: bytes) -> None:
            writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n" if chunked else raw)
            await writer.drain()

        def event(payload: Any) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        count = behaviour.tokens or request.get("max_tokens") or request["max_completion_tokens"]
        prompt = request.get("prompt") or request["messages"][0]["content"]
        prompt_tokens = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        await asyncio.sleep(behaviour.ttft_s)
        for i in range(count):
            if i:
                await asyncio.sleep(behaviour.itl_s)
            if mode == "close_mid_stream" and i == 2:
                await send(b'data: {"choices": [{"te')
                return
            if mode == "malformed" and i == 1:
                await send(b'data: {"choices": [{"text": "oops"\n\n')
                return
            if mode == "stream_error" and i == 1:
                await send(event({"error": {"message": "out of KV blocks", "code": 500}}))
                await send(b"data: [DONE]\n\n")
                return
            text = f" tok{i}"
            choice: dict[str, Any] = (
                {"index": 0, "delta": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text}
            )
            if behaviour.token_ids:
                choice["token_ids"] = [1000 + i]
            choice["finish_reason"] = "length" if i == count - 1 else None
            await send(event({"id": "cmpl-fake", "model": request["model"], "choices": [choice]}))
        if behaviour.usage and request.get("stream_options", {}).get("include_usage"):
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": count,
                "total_tokens": prompt_tokens + count,
            }
            await send(event({"id": "cmpl-fake", "choices": [], "usage": usage}))
        await send(b"data: [DONE]\n\n")
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()


def fake(**overrides: Any) -> dict[str, Any]:
    """RequestSpec.extra that makes one request behave differently: fake(mode="hang")."""
    replace(Behaviour(), **overrides)  # a misspelt field fails here, not in the server
    return {"fake": overrides}


@contextlib.contextmanager
def serving_in_thread(
    behaviour: Behaviour | None = None, *, unix_path: str | None = None, port: int = 0
) -> Iterator[FakeOpenAIServer]:
    """The server on an event loop of its own thread, for clients in other processes."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FakeOpenAIServer(behaviour, unix_path=unix_path, port=port)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
