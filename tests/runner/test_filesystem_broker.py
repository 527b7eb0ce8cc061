"""The embedded broker publishes atomically: a reader never sees a half-written message."""

from __future__ import annotations

import os

from kombu import Connection

from runner.broker import broker_settings_from_env
from runner.filesystem_broker import AtomicFilesystemTransport


def connection(tmp_path) -> Connection:
    settings = broker_settings_from_env({"VAR_DIR": str(tmp_path)})
    return Connection(
        settings["broker_url"],
        transport=settings["broker_transport"],
        transport_options=settings["broker_transport_options"],
    )


def test_the_embedded_broker_uses_the_atomic_transport(tmp_path):
    with connection(tmp_path) as conn:
        assert isinstance(conn.transport, AtomicFilesystemTransport)


def test_messages_round_trip_and_no_partial_file_is_left(tmp_path):
    with connection(tmp_path) as conn:
        queue = conn.SimpleQueue("cpu")
        queue.put({"job": 1})
        folder = tmp_path / "broker" / "queue"
        assert [n for n in os.listdir(folder) if n.endswith(".partial")] == []
        assert queue.get(timeout=5).payload == {"job": 1}
        queue.close()


def test_a_file_still_being_written_is_not_taken_for_a_message(tmp_path):
    with connection(tmp_path) as conn:
        # Another queue name than the test above: kombu remembers per process which queues it
        # declared and would not bind "cpu" again in this test's new broker folder.
        queue = conn.SimpleQueue("gpu")
        folder = tmp_path / "broker" / "queue"
        # What a writer has created but not yet renamed into place: readers must skip it
        # (kombu's own transport would hand the empty file to json.loads and crash the worker).
        (folder / "1_abc.gpu.msg.partial").write_bytes(b"")
        queue.put({"job": 2})
        assert queue.get(timeout=5).payload == {"job": 2}
        assert (folder / "1_abc.gpu.msg.partial").exists()
        queue.close()
