"""The serving engine's OpenAI-compatible HTTP server, on TCP or a Unix socket, for load
generators, graders and learners' own clients (curl, the openai package, vLLM's benchmark).

    engine_thread = EngineThread(engine)
    engine_thread.start()                  # the caller owns the engine thread: start, then stop
    handle = start_in_thread(engine_thread, tokenizer, model_name="target",
                             socket_path="/tmp/engine.sock")
    handle.address                         # "unix:///tmp/engine.sock" or "http://127.0.0.1:8000"
    ...
    handle.stop()
    engine_thread.stop()

`serve(...)` is the blocking form (it returns on SIGINT or SIGTERM when run on the main thread);
`python -m runner.serving` wraps it (runner/serving/__main__.py).

Endpoints: GET /health (200, or 500 naming the engine's failure), GET /v1/models,
POST /v1/completions and POST /v1/chat/completions (what a request may ask is in
openai_protocol.py). A streamed response is server-sent events: one `data: {...}` chunk per
generated token, a usage chunk when `stream_options.include_usage` asks for it, then
`data: [DONE]`. If the engine fails, a stream gets one `data: {"error": {...}}` event and ends
without [DONE]; a non-streaming request gets 500.

A client that closes its connection cancels its request in the engine. The server notices by
reading the connection while it waits for tokens, so a client must not shut down its sending
side while it waits for the answer: that reads as a disconnect. Only the standard library is
used: http1.py has the HTTP framing (and why each connection carries one request),
openai_app.py how a request is answered.

A Unix socket's file is made read-write for everyone (0o666). The grader connects from
outside the sandbox that runs the server, usually as the same uid; but a sandbox may run as a
uid of its own (runner/sandbox.py's sandbox_uid), and connecting to a Unix socket takes write
permission on its file. The folder that holds the socket is what keeps other users out. A
socket file left by a server that died is replaced; a live server's, or any other file, is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable
from typing import Any

from runner.serving import http1
from runner.serving.openai_app import OpenAIApp
from runner.serving.openai_protocol import ServedModel

# Longest Unix socket path Linux takes (sun_path is 108 bytes with the closing NUL).
MAX_SOCKET_PATH_BYTES = 107


def _served_model(
    engine_thread: Any,
    tokenizer: Any,
    model_name: str,
    max_model_len: int | None,
    vocab_size: int | None,
) -> ServedModel:
    """Limits given, else read from the engine (LLMEngine.max_model_len, its runner's
    vocab_size), else the tokenizer's vocabulary."""
    engine = getattr(engine_thread, "engine", None)
    if max_model_len is None:
        max_model_len = getattr(engine, "max_model_len", None)
    if vocab_size is None:
        vocab_size = getattr(getattr(engine, "runner", None), "vocab_size", None) or len(tokenizer)
    return ServedModel(name=model_name, max_model_len=max_model_len, vocab_size=vocab_size)


def _claim_socket_path(socket_path: str | os.PathLike) -> str:
    path = os.path.abspath(socket_path)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"the socket path {path} is too long: Unix sockets take at most "
            f"{MAX_SOCKET_PATH_BYTES} bytes"
        )
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"{path} exists and is not a socket; not replacing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # left by a server that died
            return path
    raise ValueError(f"another server is listening on {path}")


class _Listener:
    """A listening server and how to take it down."""

    def __init__(
        self, app: OpenAIApp, server: asyncio.Server, address: str, socket_path: str | None
    ) -> None:
        self.app = app
        self.server = server
        self.address = address
        self.socket_path = socket_path
        self.socket_inode = os.stat(socket_path).st_ino if socket_path else None

    @classmethod
    async def open(
        cls,
        app: OpenAIApp,
        *,
        host: str | None,
        port: int | None,
        socket_path: str | None,
        sock: socket.socket | None,
    ) -> _Listener:
        if sum(where is not None for where in (port, socket_path, sock)) != 1:
            raise ValueError("give the server one of port (and host), socket_path or sock")
        if sock is not None:
            return await cls._adopt(app, sock)
        if socket_path is not None:
            path = _claim_socket_path(socket_path)
            server = await asyncio.start_unix_server(
                app.handle, path=path, limit=http1.MAX_HEAD_BYTES
            )
            os.chmod(path, 0o666)
            return cls(app, server, f"unix://{path}", path)
        server = await asyncio.start_server(
            app.handle, host=host or "127.0.0.1", port=port, limit=http1.MAX_HEAD_BYTES
        )
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return cls(app, server, f"http://{shown}:{bound_port}", None)

    @classmethod
    async def _adopt(cls, app: OpenAIApp, sock: socket.socket) -> _Listener:
        """Serve on a socket someone else bound (a grader outside the sandbox passes one in):
        its file, if any, stays theirs to remove."""
        if sock.family != socket.AF_UNIX:
            server = await asyncio.start_server(app.handle, sock=sock, limit=http1.MAX_HEAD_BYTES)
            bound_host, bound_port = sock.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            return cls(app, server, f"http://{shown}:{bound_port}", None)
        # Python 3.13 would otherwise remove the file when the server closes.
        keep = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
        server = await asyncio.start_unix_server(
            app.handle, sock=sock, limit=http1.MAX_HEAD_BYTES, **keep
        )
        name = sock.getsockname()
        return cls(app, server, f"unix://{os.fsdecode(name)}" if name else "unix:", None)

    async def serve_until(self, stop: asyncio.Event) -> None:
        try:
            await stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        self.server.close()
        tasks = list(self.app.connections)
        for task in tasks:
            task.cancel()  # each cancels its request in the engine on the way out
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.server.wait_closed()
        if self.socket_path is not None:
            # Only our own socket: another server may have taken the path since.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.socket_path).st_ino == self.socket_inode:
                    os.unlink(self.socket_path)


def serve(
    engine_thread: Any,
    tokenizer: Any,
    *,
    model_name: str,
    host: str | None = None,
    port: int | None = None,
    socket_path: str | os.PathLike | None = None,
    sock: socket.socket | None = None,
    ready: Callable[[str], None] | None = None,
    max_model_len: int | None = None,
    vocab_size: int | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM (handled when called on the main thread). `ready` gets the
    address once the server listens. Where: a TCP `port` (on 127.0.0.1 unless `host` says
    otherwise; 0 takes a free port), a Unix `socket_path`, or `sock`, a socket already bound
    by the caller (TCP or Unix). max_model_len and vocab_size default to the engine's."""
    model = _served_model(engine_thread, tokenizer, model_name, max_model_len, vocab_size)

    async def main() -> None:
        stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
        listener = await _Listener.open(
            OpenAIApp(engine_thread, tokenizer, model),
            host=host,
            port=port,
            socket_path=None if socket_path is None else os.fspath(socket_path),
            sock=sock,
        )
        if ready is not None:
            ready(listener.address)
        await listener.serve_until(stop)

    asyncio.run(main())


class ServerHandle:
    """A server running on its own thread (start_in_thread)."""

    def __init__(
        self,
        address: str,
        loop: asyncio.AbstractEventLoop,
        stop_event: asyncio.Event,
        thread: threading.Thread,
    ) -> None:
        self.address = address
        self._loop = loop
        self._stop_event = stop_event
        self._thread = thread

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop listening, cancel the requests in flight, remove the socket file. The engine
        thread keeps running: its owner stops it."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop ended on its own
                self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(timeout_s)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(
    engine_thread: Any,
    tokenizer: Any,
    *,
    model_name: str,
    host: str | None = None,
    port: int | None = None,
    socket_path: str | os.PathLike | None = None,
    sock: socket.socket | None = None,
    max_model_len: int | None = None,
    vocab_size: int | None = None,
    timeout_s: float = 30.0,
) -> ServerHandle:
    """Run the server's event loop on a daemon thread; return once it listens (or raise what
    stopped it from listening)."""
    model = _served_model(engine_thread, tokenizer, model_name, max_model_len, vocab_size)
    started = threading.Event()
    outcome: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        try:
            listener = await _Listener.open(
                OpenAIApp(engine_thread, tokenizer, model),
                host=host,
                port=port,
                socket_path=None if socket_path is None else os.fspath(socket_path),
                sock=sock,
            )
        except BaseException as exc:
            outcome["error"] = exc
            started.set()
            return
        outcome["handle"] = ServerHandle(
            listener.address, asyncio.get_running_loop(), stop, threading.current_thread()
        )
        started.set()
        await listener.serve_until(stop)

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="openai-server", daemon=True)
    thread.start()
    if not started.wait(timeout_s):
        raise TimeoutError(f"the server did not start listening within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["handle"]
