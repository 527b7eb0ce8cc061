"""A small length-prefixed binary protocol for arrays over a pipe.

Frame: 4-byte magic, 4-byte header length, 8-byte payload length (big-endian), a JSON header,
then the payload: the raw bytes of the header's arrays, back to back. The trusted side reads
every frame with a deadline and size caps, because the other end runs learner code and may
write anything, or nothing, at any time.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

MAGIC = b"IRH1"
_PREFIX = struct.Struct(">4sIQ")
MAX_HEADER_BYTES = 1 << 20
MAX_DIMS = 8

# Only plain numeric dtypes cross the boundary: nothing that needs pickling or object arrays.
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


class ProtocolError(Exception):
    """The other end broke the protocol: garbage, oversize, or an impossible header."""


class PeerClosed(Exception):
    """The other end closed the pipe (usually: its process exited)."""


class Deadline(Exception):
    """No complete frame arrived before the deadline."""


def array_meta(array: np.ndarray) -> dict[str, Any]:
    if array.dtype.name not in DTYPES:
        raise ProtocolError(f"dtype {array.dtype.name} cannot cross the protocol")
    return {"dtype": array.dtype.name, "shape": list(array.shape)}


def encode(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> list[bytes | memoryview]:
    """A frame as a list of buffers, so large arrays are written without a joined copy."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = {**header, "arrays": [array_meta(a) for a in arrays]}
    body = json.dumps(header, separators=(",", ":")).encode()
    payload = sum(a.nbytes for a in arrays)
    return [_PREFIX.pack(MAGIC, len(body), payload), body] + [
        memoryview(a).cast("B") for a in arrays if a.nbytes
    ]


def write_frame(
    fd: int,
    header: dict[str, Any],
    arrays: Sequence[np.ndarray] = (),
    *,
    deadline: float | None = None,
) -> None:
    """Write one frame. With a deadline, `fd` must be non-blocking: a child that stops reading
    must not be able to hang the trusted side on a full pipe."""
    for buffer in encode(header, arrays):
        view = memoryview(buffer)
        while view:
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0 or not select.select([], [fd], [], timeout)[1]:
                    raise Deadline()
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                continue
            view = view[written:]


def _nbytes(meta: Any) -> int:
    if not isinstance(meta, dict) or meta.get("dtype") not in DTYPES:
        raise ProtocolError("array with a missing or unsupported dtype")
    shape = meta.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError("array with an invalid shape")
    return math.prod(shape) * np.dtype(meta["dtype"]).itemsize


class FrameReader:
    """Reads frames from a pipe fd with a deadline and a cap on payload size."""

    def __init__(self, fd: int, *, max_payload_bytes: int) -> None:
        self.fd = fd
        self.max_payload_bytes = max_payload_bytes

    def read(self, *, deadline: float | None) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Block until a full frame arrives; deadline is a time.monotonic() value or None."""
        prefix = self._take(_PREFIX.size, deadline)
        magic, header_len, payload_len = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise ProtocolError(f"bad frame start {bytes(prefix[:8])!r}")
        if header_len > MAX_HEADER_BYTES:
            raise ProtocolError(f"frame header of {header_len} bytes is too large")
        if payload_len > self.max_payload_bytes:
            raise ProtocolError(
                f"frame payload of {payload_len} bytes is over the {self.max_payload_bytes} cap"
            )
        try:
            header = json.loads(self._take(header_len, deadline))
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError("frame header is not JSON") from None
        if not isinstance(header, dict) or not isinstance(header.get("arrays", []), list):
            raise ProtocolError("frame header is not an object with an array list")
        metas = header.get("arrays", [])
        sizes = [_nbytes(meta) for meta in metas]
        if sum(sizes) != payload_len:
            raise ProtocolError("frame payload length does not match its arrays")
        payload = self._take(payload_len, deadline)
        arrays, offset = [], 0
        for meta, size in zip(metas, sizes, strict=True):
            # Views into a private bytearray: writable, and no second copy of the payload.
            count = size // np.dtype(meta["dtype"]).itemsize
            array = np.frombuffer(payload, dtype=meta["dtype"], count=count, offset=offset)
            arrays.append(array.reshape(meta["shape"]))
            offset += size
        return header, arrays

    def _take(self, n: int, deadline: float | None) -> bytearray:
        """Read exactly n bytes, so nothing of the next frame is ever consumed."""
        out = bytearray(n)
        view = memoryview(out)
        have = 0
        while have < n:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise Deadline()
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                raise Deadline()
            got = os.readv(self.fd, [view[have:]])
            if not got:
                raise PeerClosed()
            have += got
        return out
