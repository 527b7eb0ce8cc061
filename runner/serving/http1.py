"""Just enough HTTP/1.1 for the serving engine's OpenAI-compatible server
(runner/serving/openai_server.py), on the standard library's asyncio streams: GPU nodes are
air-gapped and a worker installs no web framework.

    request = await read_request(reader, writer)      # HttpError: answer request.status
    await send_json(writer, 200, {"ok": True})
    stream = EventStream(writer, chunked=request.version != "HTTP/1.0")
    await stream.start(); await stream.send('{"a": 1}'); await stream.end()
    await close_connection(reader, writer)

A connection carries one request, and every response says `Connection: close`. Keep-alive would
buy little here: a connection costs well under a millisecond on loopback or a Unix socket, next
to the seconds a generation takes, while reading a second request on a connection that is still
streaming (pipelining) is where small HTTP servers go wrong.

The request body must come with a Content-Length of at most MAX_BODY_BYTES: a chunked body or a
POST without a length gets 411 (no OpenAI client sends either). Streamed responses (server-sent
events) use chunked transfer encoding, so a client can tell a stream that ended (a zero-length
last chunk) from one that was cut off; an HTTP/1.0 client, which knows no chunked encoding, gets
the same events ended by the connection closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
READ_TIMEOUT_S = 60.0
# How long a closing connection waits for the client to stop sending (see close_connection).
LINGER_S = 2.0

_DIGITS = re.compile(r"[0-9]+")


class HttpError(Exception):
    """A request the server answers with this status and an error message, then closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client closed the connection before a whole request arrived: nobody to answer."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # without the query string
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: dict[str, str]  # names in lower case
    body: bytes


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> HttpRequest:
    """The next request on the connection. `reader` must have been made with a limit of
    MAX_HEAD_BYTES (asyncio.start_server(..., limit=MAX_HEAD_BYTES)), which bounds the head."""
    head = await _read_head(reader)
    method, path, version, headers = _parse_head(head)
    body = await _read_body(reader, writer, method, headers)
    return HttpRequest(method=method, path=path, version=version, headers=headers, body=body)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "the request ended in the middle of its headers") from None
        raise ClientGone from None
    except asyncio.LimitOverrunError:
        raise HttpError(
            431, f"the request line and headers are longer than {MAX_HEAD_BYTES} bytes"
        ) from None
    except TimeoutError:
        raise HttpError(408, f"no whole request arrived within {READ_TIMEOUT_S:g} s") from None
    except ConnectionError:
        raise ClientGone from None


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[0].isalpha():
        raise HttpError(
            400, f"the request line must read 'METHOD /path HTTP/1.1', not {lines[0]!r}"
        )
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        # A name with spaces around it, or a line folded onto the previous one, is malformed
        # (RFC 9112 section 5): reading it anyway is how request smuggling starts.
        if not colon or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line!r}")
        name, value = name.lower(), value.strip()
        if name in headers:
            if name == "content-length" and headers[name] != value:
                raise HttpError(400, "the request has two different Content-Length headers")
            value = value if name == "content-length" else f"{headers[name]}, {value}"
        headers[name] = value
    return method.upper(), target.split("?", 1)[0], version, headers


async def _read_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    headers: dict[str, str],
) -> bytes:
    if "transfer-encoding" in headers:
        raise HttpError(
            411,
            "send the request body with a Content-Length header; "
            "chunked request bodies are not accepted",
        )
    length_text = headers.get("content-length")
    if length_text is None:
        if method == "POST":
            raise HttpError(411, "a POST needs a Content-Length header")
        return b""
    if not _DIGITS.fullmatch(length_text):
        raise HttpError(400, f"Content-Length must be a number of bytes, not {length_text!r}")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise HttpError(
            413, f"the request body is {length} bytes; the limit is {MAX_BODY_BYTES} (1 MiB)"
        )
    if headers.get("expect", "").lower() == "100-continue":
        # curl asks before sending a body over 1 KiB, and waits a second if nobody answers.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S)
    except (asyncio.IncompleteReadError, ConnectionError):
        raise ClientGone from None
    except TimeoutError:
        raise HttpError(
            408, f"the body did not arrive within {READ_TIMEOUT_S:g} s of the headers"
        ) from None


def _response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send_json(
    writer: asyncio.StreamWriter,
    status: int,
    body: Any,
    *,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    data = json.dumps(body).encode("utf-8")
    head = _response_head(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
            *(headers or []),
        ],
    )
    writer.write(head + data)
    await writer.drain()


class EventStream:
    """A 200 response of server-sent events: `data: ...` lines, one event per send()."""

    def __init__(self, writer: asyncio.StreamWriter, *, chunked: bool) -> None:
        self.writer = writer
        self.chunked = chunked

    async def start(self) -> None:
        headers = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("Connection", "close"),
        ]
        if self.chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        self.writer.write(_response_head(200, headers))
        await self.writer.drain()

    async def send(self, data: str) -> None:
        event = f"data: {data}\n\n".encode()
        if self.chunked:
            event = b"%x\r\n%b\r\n" % (len(event), event)
        self.writer.write(event)
        # drain() raises ConnectionError once the client has gone: that is how a stream learns
        # of a disconnect while it is writing.
        await self.writer.drain()

    async def end(self) -> None:
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()


async def close_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close after the response, lingering first: the server says it is done writing, then
    reads and drops whatever the client still sends (the rest of a body it refused, say) until
    the client closes, at most LINGER_S. Closing a socket that has unread bytes makes the kernel
    reset the connection, and a reset can destroy the response before the client reads it."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_S):
            while await reader.read(64 * 1024):
                pass
    except (OSError, TimeoutError, RuntimeError):
        pass  # the client went first, or never closed: nothing left to save
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
