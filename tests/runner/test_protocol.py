from __future__ import annotations

import contextlib
import os
import struct
import time

import numpy as np
import pytest

from runner.harness.protocol import (
    MAGIC,
    Deadline,
    FrameReader,
    PeerClosed,
    ProtocolError,
    write_frame,
)


@pytest.fixture
def pipe():
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_arrays_round_trip_with_shape_dtype_and_values(pipe):
    read_fd, write_fd = pipe
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([True, False])]
    write_frame(write_fd, {"op": "call", "id": 7}, arrays)
    header, got = FrameReader(read_fd, max_payload_bytes=1 << 20).read(deadline=None)
    assert header["op"] == "call" and header["id"] == 7
    assert [a.dtype.name for a in got] == ["float32", "bool"]
    np.testing.assert_array_equal(got[0], arrays[0])
    got[0][0, 0] = 99  # received arrays are private and writable


def test_a_frame_without_arrays_round_trips(pipe):
    read_fd, write_fd = pipe
    write_frame(write_fd, {"op": "ready"})
    header, arrays = FrameReader(read_fd, max_payload_bytes=0).read(deadline=None)
    assert header["op"] == "ready" and arrays == []


def test_garbage_is_a_protocol_error(pipe):
    read_fd, write_fd = pipe
    os.write(write_fd, b"PASSED! all criteria met\n")
    with pytest.raises(ProtocolError, match="bad frame start"):
        FrameReader(read_fd, max_payload_bytes=1 << 20).read(deadline=time.monotonic() + 1)


def test_an_oversized_payload_is_refused_before_it_is_read(pipe):
    read_fd, write_fd = pipe
    os.write(write_fd, struct.pack(">4sIQ", MAGIC, 2, 1 << 40) + b"{}")
    with pytest.raises(ProtocolError, match="over the"):
        FrameReader(read_fd, max_payload_bytes=1 << 20).read(deadline=time.monotonic() + 1)


def test_a_payload_that_disagrees_with_its_arrays_is_refused(pipe):
    read_fd, write_fd = pipe
    body = b'{"arrays":[{"dtype":"float32","shape":[4]}]}'
    os.write(write_fd, struct.pack(">4sIQ", MAGIC, len(body), 8) + body + bytes(8))
    with pytest.raises(ProtocolError, match="does not match"):
        FrameReader(read_fd, max_payload_bytes=1 << 20).read(deadline=time.monotonic() + 1)


def test_an_object_dtype_is_refused(pipe):
    read_fd, write_fd = pipe
    body = b'{"arrays":[{"dtype":"object","shape":[1]}]}'
    os.write(write_fd, struct.pack(">4sIQ", MAGIC, len(body), 8) + body + bytes(8))
    with pytest.raises(ProtocolError, match="dtype"):
        FrameReader(read_fd, max_payload_bytes=1 << 20).read(deadline=time.monotonic() + 1)


def test_silence_ends_at_the_deadline(pipe):
    read_fd, _ = pipe
    started = time.monotonic()
    with pytest.raises(Deadline):
        FrameReader(read_fd, max_payload_bytes=1).read(deadline=time.monotonic() + 0.2)
    assert time.monotonic() - started < 1


def test_a_closed_pipe_is_peer_closed(pipe):
    read_fd, write_fd = pipe
    os.write(write_fd, MAGIC)
    os.close(write_fd)
    with pytest.raises(PeerClosed):
        FrameReader(read_fd, max_payload_bytes=1).read(deadline=time.monotonic() + 1)


def test_a_write_to_a_reader_that_never_reads_ends_at_the_deadline(pipe):
    _, write_fd = pipe
    os.set_blocking(write_fd, False)
    big = np.zeros(4 << 20, dtype=np.uint8)
    with pytest.raises(Deadline):
        write_frame(write_fd, {"op": "call"}, [big], deadline=time.monotonic() + 0.3)
