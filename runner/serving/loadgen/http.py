"""A small asyncio HTTP/1.1 client for the load harness, over TCP or a Unix socket.

Stdlib only: GPU worker nodes are air-gapped and install from a small wheelhouse, so no
aiohttp or httpx. The `serving` lab's grader talks to an engine that runs in a sandbox with
no network and listens on a Unix socket (`unix:///path/to/socket`); the command line talks
to any server over TCP (`http://127.0.0.1:8000`).

The server may be a learner's engine, so nothing it sends is trusted: every wait has a
timeout (connect, first byte, whole request), every size has a cap, and anything that is
not HTTP/1.x or not a well-formed event stream raises `ProtocolError` naming what was wrong.

    async with open_request(endpoint, "POST", "/v1/completions", json_body=body,
                            timeouts=Timeouts(total_s=60)) as response:
        await expect_ok(response)
        async for data in iter_sse(response):     # sse.py
            ...  # the `data` of each event, "[DONE]" last
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

_HEAD_LIMIT = 64 * 1024  # status line and headers together
_READ_SIZE = 64 * 1024
_STATUS_LINE = re.compile(r"HTTP/1\.[01] (\d{3})(?: (.*))?")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,15}")


class ProtocolError(Exception):
    """The server's answer is not well-formed HTTP/1.x or Server-Sent Events."""


class RequestTimeout(TimeoutError):
    """A connect, first-byte or whole-request timeout ran out; the message says which."""


class ConnectFailed(ConnectionError):
    """Nothing accepted the connection (no server, wrong port, no socket file)."""


class HTTPStatusError(Exception):
    """The server answered with a status other than 200."""

    def __init__(self, status: int, reason: str, body: str):
        self.status, self.reason, self.body = status, reason, body
        text = f"HTTP {status} {reason}".rstrip()
        super().__init__(f"{text}: {body}" if body else text)


@dataclass(frozen=True)
class Timeouts:
    """Seconds. `first_byte_s` counts from the end of sending the request to the first byte
    of the answer; None means only the whole-request bound applies (a server may hold its
    status line back until the first token is ready). `total_s` bounds everything."""

    total_s: float = 600.0
    connect_s: float = 10.0
    first_byte_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("total_s", "connect_s", "first_byte_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"timeout {name} must be a positive number of seconds")


@dataclass
class Endpoint:
    """Where a server listens: `http://host:port[/prefix]`, `https://...`, or
    `unix:///absolute/path/to/socket` (then the HTTP Host header is `localhost`)."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    scheme: str = field(init=False)
    host: str = field(init=False)
    port: int = field(init=False)
    prefix: str = field(init=False)
    socket_path: str | None = field(init=False)

    def __post_init__(self) -> None:
        url = self.base_url.strip()
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.socket_path = None
        self.prefix = ""
        if parts.scheme == "unix":
            if parts.netloc or not parts.path:
                raise ValueError(
                    f"{url!r}: write a Unix socket as unix:///absolute/path/to/socket "
                    "(three slashes)"
                )
            self.socket_path, self.host, self.port = parts.path, "localhost", 0
            return
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{url!r} is not a server address: use http://host:port or unix:///path/to/socket"
            )
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")

    @property
    def where(self) -> str:
        """The address in words, for error messages."""
        return f"Unix socket {self.socket_path}" if self.socket_path else f"{self.host}:{self.port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self.socket_path:
                return await asyncio.open_unix_connection(self.socket_path, limit=_HEAD_LIMIT)
            context = ssl.create_default_context() if self.scheme == "https" else None
            return await asyncio.open_connection(
                self.host, self.port, ssl=context, limit=_HEAD_LIMIT
            )
        except FileNotFoundError:
            raise ConnectFailed(
                f"no Unix socket at {self.socket_path} (is the server running?)"
            ) from None
        except ConnectionRefusedError:
            raise ConnectFailed(
                f"connection to {self.where} refused (is the server running?)"
            ) from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.where}: {exc}") from None


class Response:
    """Status and headers of an answer; read its body once, as bytes or as events."""

    def __init__(
        self,
        *,
        reader: asyncio.StreamReader,
        status: int,
        reason: str,
        headers: dict[str, str],
        deadline: float,
        total_s: float,
        max_body_bytes: int,
    ):
        self.status, self.reason, self.headers = status, reason, headers
        self._reader = reader
        self._deadline = deadline
        self._total_s = total_s
        self._max_body = max_body_bytes
        self._received = 0

    async def _timed(self, awaitable: Any) -> Any:
        try:
            async with asyncio.timeout_at(self._deadline):
                return await awaitable
        except TimeoutError:
            raise RequestTimeout(
                f"the whole request took longer than {self._total_s:g} s (the server stalled "
                f"after {self._received} body bytes)"
            ) from None

    def _count(self, size: int) -> None:
        self._received += size
        if self._received > self._max_body:
            raise ProtocolError(f"the body is larger than the {self._max_body}-byte limit")

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, with chunked transfer coding undone."""
        if self.status in (204, 304):
            return
        coding = self.headers.get("transfer-encoding")
        if coding is not None:
            if coding.split(",")[-1].strip().lower() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {coding!r}")
            async for piece in self._iter_chunked():
                yield piece
            return
        length = self.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ProtocolError(f"Content-Length {length!r} is not a number")
            async for piece in self._iter_length(int(length)):
                yield piece
            return
        # No length and not chunked: the body runs to the end of the connection, which is
        # allowed because we sent `Connection: close`. A cut stream then looks complete,
        # which is why iter_sse insists on `data: [DONE]`.
        while piece := await self._timed(self._reader.read(_READ_SIZE)):
            self._count(len(piece))
            yield piece

    async def _iter_length(self, length: int) -> AsyncIterator[bytes]:
        if length > self._max_body:
            raise ProtocolError(f"Content-Length {length} is over the {self._max_body}-byte limit")
        left = length
        while left:
            piece = await self._timed(self._reader.read(min(left, _READ_SIZE)))
            if not piece:
                raise ProtocolError(
                    f"the connection closed after {length - left} of {length} body bytes"
                )
            left -= len(piece)
            self._count(len(piece))
            yield piece

    async def _iter_chunked(self) -> AsyncIterator[bytes]:
        while True:
            line = await self._line("a chunk size line")
            size_text = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise ProtocolError(f"bad chunk size line {line[:40]!r} in a chunked body")
            size = int(size_text, 16)
            if size == 0:
                while (await self._line("the trailer")).strip():
                    pass  # trailer fields: nothing we use
                return
            left = size
            while left:
                piece = await self._timed(self._reader.read(min(left, _READ_SIZE)))
                if not piece:
                    raise ProtocolError("the connection closed in the middle of a chunk")
                left -= len(piece)
                self._count(len(piece))
                yield piece
            if await self._line("the end of a chunk") not in (b"\r\n", b"\n"):
                raise ProtocolError("a chunk is longer than its size line says")

    async def _line(self, what: str) -> bytes:
        try:
            line = await self._timed(self._reader.readuntil(b"\n"))
        except asyncio.IncompleteReadError:
            raise ProtocolError(
                f"the connection closed in a chunked body, waiting for {what}"
            ) from None
        except asyncio.LimitOverrunError:
            raise ProtocolError(f"{what} is longer than {_HEAD_LIMIT} bytes") from None
        self._count(len(line))
        return line

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body, or its first `limit` bytes (then the rest is not read)."""
        data = bytearray()
        async for piece in self.iter_bytes():
            data += piece
            if limit is not None and len(data) >= limit:
                return bytes(data[:limit])
        return bytes(data)


def _request_head(
    endpoint: Endpoint, method: str, path: str, headers: Mapping[str, str], length: int
) -> bytes:
    host = endpoint.host if endpoint.port in (0, 80, 443) else f"{endpoint.host}:{endpoint.port}"
    fields = {
        "Host": host,
        "User-Agent": "inference-roadmap-loadgen",
        "Accept": "text/event-stream, application/json",
        # One connection per request, closed after it: no keep-alive pool keeps this client
        # simple, and one stuck or poisoned connection can never delay another request.
        "Connection": "close",
    }
    if length or method in ("POST", "PUT"):
        fields["Content-Type"] = "application/json"
        fields["Content-Length"] = str(length)
    if endpoint.api_key:
        fields["Authorization"] = f"Bearer {endpoint.api_key}"
    fields.update(headers)
    lines = [f"{method} {endpoint.prefix}{path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if not match:
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(match.group(1)), match.group(2) or "", headers


@contextlib.asynccontextmanager
async def open_request(
    endpoint: Endpoint,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    timeouts: Timeouts | None = None,
    headers: Mapping[str, str] | None = None,
    max_body_bytes: int = 64 << 20,
) -> AsyncIterator[Response]:
    """Connect, send the request, read the status line and headers, and yield the Response
    whose body the caller reads; the connection is closed on the way out, however it ends."""
    if not path.startswith("/"):
        raise ValueError(f"the request path must start with '/', not {path!r}")
    timeouts = timeouts or Timeouts()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.total_s
    body = b"" if json_body is None else json.dumps(json_body).encode()
    try:
        async with asyncio.timeout_at(min(deadline, loop.time() + timeouts.connect_s)):
            reader, writer = await endpoint.connect()
    except TimeoutError:
        raise RequestTimeout(
            f"could not connect to {endpoint.where} within "
            f"{min(timeouts.connect_s, timeouts.total_s):g} s"
        ) from None
    try:
        writer.write(_request_head(endpoint, method, path, headers or {}, len(body)) + body)
        first_byte = deadline
        if timeouts.first_byte_s is not None:
            first_byte = min(deadline, loop.time() + timeouts.first_byte_s)
        try:
            async with asyncio.timeout_at(first_byte):
                await writer.drain()
                status, reason, head = await _read_head(reader)
        except TimeoutError:
            waited = (
                min(timeouts.first_byte_s, timeouts.total_s)
                if timeouts.first_byte_s is not None
                else timeouts.total_s
            )
            raise RequestTimeout(
                f"no answer from {endpoint.where} within {waited:g} s of sending the request"
            ) from None
        except ConnectionError as exc:
            raise ProtocolError(f"the connection broke while sending the request: {exc}") from None
        yield Response(
            reader=reader,
            status=status,
            reason=reason,
            headers=head,
            deadline=deadline,
            total_s=timeouts.total_s,
            max_body_bytes=max_body_bytes,
        )
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ProtocolError("the server closed the connection without answering") from None
            raise ProtocolError(
                f"the connection closed in the middle of the response head: {exc.partial[:80]!r}"
            ) from None
        except asyncio.LimitOverrunError:
            raise ProtocolError(
                f"the status line and headers are longer than {_HEAD_LIMIT} bytes"
            ) from None
        status, reason, headers = _parse_head(head[:-4])
        if not 100 <= status < 200:  # skip interim answers such as 100 Continue
            return status, reason, headers


async def expect_ok(response: Response, *, excerpt: int = 500) -> None:
    """Raise HTTPStatusError, with the start of the body, unless the status is 200."""
    if response.status == 200:
        return
    try:
        body = (await response.read(excerpt)).decode("utf-8", "replace").strip()
    except (ProtocolError, RequestTimeout):
        body = ""
    raise HTTPStatusError(response.status, response.reason, body)


async def get_json(endpoint: Endpoint, path: str, *, timeouts: Timeouts | None = None) -> Any:
    """GET `path` and parse its JSON body (e.g. /v1/models)."""
    async with open_request(endpoint, "GET", path, timeouts=timeouts) as response:
        await expect_ok(response)
        body = await response.read()
    try:
        return json.loads(body)
    except ValueError:
        raise ProtocolError(f"{path} did not return JSON: {body[:80]!r}") from None
