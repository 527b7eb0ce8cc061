"""Server-Sent Events, as OpenAI-compatible servers stream completions: `SSEDecoder` turns
bytes into the `data` of each event with no I/O (so the asyncio client and the Locust user
share it), and `iter_sse` reads them from a Response of the asyncio client (http.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from runner.serving.loadgen.http import ProtocolError, Response


async def iter_sse(response: Response, *, max_event_bytes: int = 1 << 20) -> AsyncIterator[str]:
    """The `data` of each Server-Sent Event; the last one yielded is "[DONE]". A body
    that ends without `data: [DONE]` raises ProtocolError: it was cut short."""
    decoder = SSEDecoder(max_event_bytes=max_event_bytes)
    async for piece in response.iter_bytes():
        for data in decoder.feed(piece):
            yield data
            if data == "[DONE]":
                return
    for data in decoder.close():
        yield data
        if data == "[DONE]":
            return
    raise ProtocolError(
        "the stream ended without `data: [DONE]` (the server closed the connection mid-stream?)"
    )


class SSEDecoder:
    """Bytes of a `text/event-stream` in, the `data` of each complete event out (lines of
    one event joined by newlines). Comments (`: ping`) and the `event`, `id` and `retry`
    fields are skipped: OpenAI-compatible streams carry everything in `data`. Lines end in
    LF or CRLF. No I/O here, so the asyncio client and the Locust user share it."""

    def __init__(self, *, max_event_bytes: int = 1 << 20):
        self._buffer = bytearray()
        self._data: list[str] = []
        self._size = 0
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        events = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            data = self._line(line[:-1] if line.endswith(b"\r") else line)
            if data is not None:
                events.append(data)
        if len(self._buffer) > self._max:
            raise ProtocolError(f"an event line is longer than {self._max} bytes")
        return events

    def close(self) -> list[str]:
        """At the end of the body. A last `data: [DONE]` without its blank line is accepted;
        any other unfinished event means the stream was cut, which raises ProtocolError."""
        events = self.feed(b"\n\n") if self._buffer.strip() == b"data: [DONE]" else []
        if self._buffer.strip() or self._data:
            cut = bytes(self._buffer[:60]) or "\n".join(self._data)[:60].encode()
            raise ProtocolError(
                f"the connection closed in the middle of an event (it began {cut!r})"
            )
        return events

    def _line(self, raw: bytes) -> str | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"an event line is not UTF-8: {raw[:60]!r}") from None
        if not line:  # a blank line ends the event
            if not self._data:
                return None
            data, self._data, self._size = "\n".join(self._data), [], 0
            return data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            value = value[1:] if value.startswith(" ") else value
            self._size += len(value)
            if self._size > self._max:
                raise ProtocolError(f"an event is larger than {self._max} bytes")
            self._data.append(value)
        return None
