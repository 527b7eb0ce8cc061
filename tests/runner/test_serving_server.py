"""The serving engine's OpenAI-compatible server (runner/serving/openai_server.py): streamed
and whole completions and chat completions over TCP and a Unix socket, in OpenAI's and vLLM's
field names; every bad request answered with an OpenAI error while the server keeps serving;
a client that leaves cancels its request; an engine failure reaches the streams and /health.

Most tests run the server in a thread against FakeEngineThread, which follows EngineThread's
interface and sends scripted tokens. The last one runs `python -m runner.serving` with the
reference scheduler and the committed model and checks its tokens against greedy_alone's.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from runner.llm import load_tokenizer
from runner.serving.engine import EngineFailure, TokenEvent
from runner.serving.openai_protocol import IncrementalDetokenizer
from runner.serving.openai_server import ServerHandle, start_in_thread

REPO = Path(__file__).resolve().parents[2]
REFERENCE_SOLUTION = REPO / "notebooks" / "serving" / "reference_solution.py"
EOS = 0
VOCAB = 4096
MAX_MODEL_LEN = 64
MODEL = "tiny"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def script(tokenizer) -> list[int]:
    """The tokens every fake request generates, in order: text with multi-byte characters
    (split across tokens) and an end-of-text token at index 12."""
    words = tokenizer.encode(" héllo wörld, the engine says 🙂 twice", add_special_tokens=False)
    assert EOS not in words
    return words[:12] + [EOS] + words[12:]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class FakeEngineThread:
    """Stands in for runner.serving.engine.EngineThread. Every request generates `script` in
    order, one token per step of its own thread, and finishes at max_tokens ("length") or at
    the end-of-text token unless ignore_eos ("stop"). With `pause_after`, requests stop after
    that many tokens (until `resume` is set): a stream held open mid-way."""

    def __init__(self, script: list[int], *, pause_after: int | None = None) -> None:
        self.engine = SimpleNamespace(
            max_model_len=MAX_MODEL_LEN, runner=SimpleNamespace(vocab_size=VOCAB)
        )
        self.script = script
        self.pause_after = pause_after
        self.resume = threading.Event()
        self.failure: EngineFailure | None = None
        self.refusal: str | None = None  # submit raises ValueError(refusal)
        self.submitted: list[dict] = []
        self.cancelled: list[int] = []
        self._active: dict[int, dict] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    def submit(self, prompt_ids, *, max_tokens, ignore_eos, on_event) -> int:
        if self.refusal is not None:
            raise ValueError(self.refusal)
        with self._lock:
            seq_id = len(self.submitted)
            self.submitted.append(
                {"prompt_ids": list(prompt_ids), "max_tokens": max_tokens, "ignore_eos": ignore_eos}
            )
            self._active[seq_id] = {
                "max_tokens": max_tokens,
                "ignore_eos": ignore_eos,
                "on_event": on_event,
                "sent": 0,
            }
        return seq_id

    def cancel(self, seq_id: int) -> None:
        with self._lock:
            self.cancelled.append(seq_id)
            self._active.pop(seq_id, None)

    def fail(self, message: str) -> None:
        with self._lock:
            self.failure = EngineFailure(message, f"Traceback (most recent call last):\n{message}")

    def _run(self) -> None:
        while not self._stopping.wait(0.002):
            with self._lock:
                deliveries = self._step()
            for on_event, event in deliveries:
                on_event(event)

    def _step(self) -> list[tuple[Callable, object]]:
        if self.failure is not None:  # every pending request gets it, as EngineThread does
            deliveries = [(r["on_event"], self.failure) for r in self._active.values()]
            self._active.clear()
            return deliveries
        deliveries = []
        for seq_id, request in list(self._active.items()):
            paused = self.pause_after is not None and request["sent"] >= self.pause_after
            if paused and not self.resume.is_set():
                continue
            token = self.script[request["sent"] % len(self.script)]
            request["sent"] += 1
            reason = None
            if token == EOS and not request["ignore_eos"]:
                reason = "stop"
            elif request["sent"] >= request["max_tokens"]:
                reason = "length"
            if reason is not None:
                del self._active[seq_id]
            deliveries.append(
                (request["on_event"], TokenEvent(seq_id, token, reason is not None, reason))
            )
        return deliveries


@dataclass
class Served:
    handle: ServerHandle
    engine: FakeEngineThread
    socket_path: Path | None

    @property
    def address(self) -> str:
        return self.handle.address


@pytest.fixture
def serve(tokenizer, script) -> Iterator[Callable[..., Served]]:
    """serve(unix=False, pause_after=None) -> a server on a fake engine, stopped afterwards."""
    started: list[Served] = []
    folders: list[tempfile.TemporaryDirectory] = []

    def start(*, unix: bool = False, pause_after: int | None = None) -> Served:
        engine = FakeEngineThread(script, pause_after=pause_after)
        engine.start()
        socket_path = None
        if unix:  # short: a Unix socket path is limited to 107 bytes
            folders.append(tempfile.TemporaryDirectory(prefix="srv"))
            socket_path = Path(folders[-1].name) / "engine.sock"
            handle = start_in_thread(engine, tokenizer, model_name=MODEL, socket_path=socket_path)
        else:
            handle = start_in_thread(engine, tokenizer, model_name=MODEL, port=0)
        started.append(Served(handle, engine, socket_path))
        return started[-1]

    yield start
    for served in started:
        served.engine.resume.set()
        served.handle.stop()
        served.engine.stop()
    for folder in folders:
        folder.cleanup()


# --- clients: http.client over TCP, raw bytes over either ---


def http_post(address: str, path: str, body: dict) -> http.client.HTTPResponse:
    url = urlsplit(address)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "json"})
    return connection.getresponse()


def connect(address: str) -> socket.socket:
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address.removeprefix("unix://"))
    else:
        url = urlsplit(address)
        sock = socket.create_connection((url.hostname, url.port))
    sock.settimeout(10)
    return sock


def request_bytes(
    method: str,
    path: str,
    body: dict | bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    data = json.dumps(body).encode() if isinstance(body, dict) else body or b""
    fields = {"Host": "localhost", "Content-Type": "application/json"}
    if body is not None:
        fields["Content-Length"] = str(len(data))
    fields.update(headers or {})
    head = [f"{method} {path} {version}"] + [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def receive_all(sock: socket.socket) -> bytes:
    data = b""
    while piece := sock.recv(65536):
        data += piece
    return data


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[int]  # 1xx statuses before the answer

    def json(self):
        return json.loads(self.body)

    def events(self) -> list[str]:
        return sse_events(self.body)


def dechunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert data == b"\r\n", "a chunked body ends with an empty chunk"
            return body
        body, data = body + data[:size], data[size:]
        assert data.startswith(b"\r\n")
        data = data[2:]


def parse_reply(data: bytes) -> Reply:
    interim = []
    while True:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        if status >= 200:
            break
        interim.append(status)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        data = dechunk(data)
    elif "content-length" in headers:
        assert len(data) == int(headers["content-length"])
    return Reply(status, headers, data, interim)


def exchange(address: str, raw: bytes) -> Reply:
    with connect(address) as sock:
        sock.sendall(raw)
        return parse_reply(receive_all(sock))


def sse_events(body: bytes) -> list[str]:
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), "every event ends with a blank line"
    events = text[:-2].split("\n\n")
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


def chunks_of(events: list[str]) -> list[dict]:
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


# --- streaming ---


def test_it_streams_a_completion_over_tcp_with_token_ids_and_usage(serve, tokenizer, script):
    served = serve()
    body = {
        "model": MODEL,
        "prompt": "Hello there",
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }
    response = http_post(served.address, "/v1/completions", body)
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    assert response.getheader("Transfer-Encoding") == "chunked"
    chunks = chunks_of(sse_events(response.read()))

    prompt_ids = tokenizer.encode("Hello there")
    assert served.engine.submitted == [
        {"prompt_ids": prompt_ids, "max_tokens": 5, "ignore_eos": False}
    ]
    *tokens, usage = chunks
    assert len(tokens) == 5
    assert {chunk["id"] for chunk in chunks} == {tokens[0]["id"]}
    assert tokens[0]["id"].startswith("cmpl-")
    for chunk in tokens:
        assert chunk["object"] == "text_completion"
        assert chunk["model"] == MODEL
        assert isinstance(chunk["created"], int)
        assert chunk["choices"][0]["index"] == 0
        assert chunk["choices"][0]["logprobs"] is None
    choices = [chunk["choices"][0] for chunk in tokens]
    assert [tid for choice in choices for tid in choice["token_ids"]] == script[:5]
    assert "".join(choice["text"] for choice in choices) == tokenizer.decode(script[:5])
    assert [choice["finish_reason"] for choice in choices] == [None] * 4 + ["length"]
    assert choices[0]["prompt_token_ids"] == prompt_ids
    assert "prompt_token_ids" not in choices[1]
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 5,
        "total_tokens": len(prompt_ids) + 5,
    }


def test_it_streams_a_chat_completion_over_a_unix_socket(serve, tokenizer, script):
    served = serve(unix=True)
    assert served.address == f"unix://{served.socket_path}"
    # The grader connects from outside the sandbox: anyone who can reach the folder may.
    assert stat.S_IMODE(os.stat(served.socket_path).st_mode) == 0o666
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say hi"}]},
        ],
        "max_tokens": 9,
        "stream": True,
    }
    reply = exchange(served.address, request_bytes("POST", "/v1/chat/completions", body))
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    chunks = chunks_of(reply.events())

    assert served.engine.submitted[0]["prompt_ids"] == tokenizer.encode("Be brief.\nSay hi")
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = chunks[1:]
    assert len(tokens) == 9, "one chunk per token, and no usage chunk unless asked"
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in tokens)
    assert text == tokenizer.decode(script[:9])
    assert "token_ids" not in tokens[0]["choices"][0], "token ids only when asked"
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"


def test_it_stops_at_the_end_of_text_token_unless_told_to_ignore_it(serve, script):
    served = serve(unix=True)
    body = {"prompt": [5, 6, 7], "max_tokens": 20, "stream": True, "return_token_ids": True}
    reply = exchange(served.address, request_bytes("POST", "/v1/completions", body))
    choices = [chunk["choices"][0] for chunk in chunks_of(reply.events())]
    assert served.engine.submitted[0]["prompt_ids"] == [5, 6, 7], "token ids are used as given"
    assert [choice["token_ids"][0] for choice in choices] == script[:13]  # EOS last
    assert choices[-1]["finish_reason"] == "stop"

    body["ignore_eos"] = True
    reply = exchange(served.address, request_bytes("POST", "/v1/completions", body))
    choices = [chunk["choices"][0] for chunk in chunks_of(reply.events())]
    assert served.engine.submitted[1]["ignore_eos"] is True
    assert len(choices) == 20
    assert choices[-1]["finish_reason"] == "length"


def test_an_http_1_0_client_gets_the_stream_ended_by_the_closed_connection(serve, script):
    served = serve()
    body = {"prompt": "Hi", "max_tokens": 3, "stream": True}
    reply = exchange(
        served.address, request_bytes("POST", "/v1/completions", body, version="HTTP/1.0")
    )
    assert reply.status == 200
    assert "transfer-encoding" not in reply.headers, "HTTP/1.0 knows no chunked encoding"
    assert len(chunks_of(reply.events())) == 3


def test_it_answers_expect_100_continue_before_the_body_arrives(serve):
    served = serve()
    with connect(served.address) as sock:
        raw = request_bytes("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        head, _, body = raw.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        reply = parse_reply(receive_all(sock))
    assert reply.status == 200
    assert reply.json()["usage"]["completion_tokens"] == 2


# --- whole answers ---


def test_a_non_streaming_completion_is_one_openai_body(serve, tokenizer, script):
    served = serve()
    body = {"prompt": "Hello", "max_tokens": 7, "return_token_ids": True}
    response = http_post(served.address, "/v1/completions", body)
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    answer = json.loads(response.read())
    prompt_ids = tokenizer.encode("Hello")
    assert answer["object"] == "text_completion"
    assert answer["model"] == MODEL
    assert answer["choices"] == [
        {
            "index": 0,
            "text": tokenizer.decode(script[:7]),
            "logprobs": None,
            "finish_reason": "length",
            "token_ids": script[:7],
            "prompt_token_ids": prompt_ids,
        }
    ]
    assert answer["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 7,
        "total_tokens": len(prompt_ids) + 7,
    }


def test_a_non_streaming_chat_completion_is_one_openai_body(serve, tokenizer, script):
    served = serve(unix=True)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 4}
    reply = exchange(served.address, request_bytes("POST", "/v1/chat/completions", body))
    answer = reply.json()
    assert reply.status == 200
    assert answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-")
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": tokenizer.decode(script[:4]),
    }
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 4


def test_chat_asks_for_the_rest_of_the_context_when_max_tokens_is_left_out(serve, tokenizer):
    served = serve()
    body = {"messages": [{"role": "user", "content": "Hi"}], "ignore_eos": True}
    assert http_post(served.address, "/v1/chat/completions", body).status == 200
    prompt_len = len(tokenizer.encode("Hi"))
    assert served.engine.submitted[0]["max_tokens"] == MAX_MODEL_LEN - prompt_len


def test_models_and_health(serve):
    served = serve(unix=True)
    models = exchange(served.address, request_bytes("GET", "/v1/models")).json()
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == MODEL
    assert card["object"] == "model"
    assert card["max_model_len"] == MAX_MODEL_LEN
    assert "joined with newlines" in card["chat_prompt"]
    health = exchange(served.address, request_bytes("GET", "/health"))
    assert (health.status, health.json()) == (200, {"status": "ok"})
    served.engine.stop()
    health = exchange(served.address, request_bytes("GET", "/health"))
    assert health.status == 503
    assert "not running" in health.json()["error"]["message"]


# --- bad requests ---

GOOD = {"prompt": "Hi", "max_tokens": 2}
BAD_REQUESTS = {
    "unknown path": (request_bytes("POST", "/v1/embeddings", GOOD), 404, "/v1/embeddings"),
    "wrong method": (request_bytes("GET", "/v1/completions"), 405, "takes POST"),
    "not json": (request_bytes("POST", "/v1/completions", b'{"prompt": '), 400, "not valid JSON"),
    "not an object": (request_bytes("POST", "/v1/completions", b"[1, 2]"), 400, "JSON object"),
    "empty body": (request_bytes("POST", "/v1/completions", b""), 400, "empty"),
    "chunked body": (
        request_bytes("POST", "/v1/completions", headers={"Transfer-Encoding": "chunked"})
        + b"5\r\n{}   \r\n0\r\n\r\n",
        411,
        "Content-Length",
    ),
    "no length": (request_bytes("POST", "/v1/completions"), 411, "Content-Length"),
    "huge body": (
        request_bytes("POST", "/v1/completions", headers={"Content-Length": str(2 << 20)}),
        413,
        "1 MiB",
    ),
    "garbled request line": (b"HELLO\r\n\r\n", 400, "request line"),
    "bad header": (b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400, "header"),
    "temperature": (
        request_bytes("POST", "/v1/completions", {**GOOD, "temperature": 0.7}),
        400,
        "decodes greedily",
    ),
    "too long": (
        request_bytes("POST", "/v1/completions", {"prompt": [5] * 60, "max_tokens": 10}),
        400,
        f"max_model_len = {MAX_MODEL_LEN}",
    ),
    "token outside the vocabulary": (
        request_bytes("POST", "/v1/completions", {"prompt": [5, VOCAB]}),
        400,
        "outside the vocabulary",
    ),
    "several prompts": (
        request_bytes("POST", "/v1/completions", {"prompt": ["a", "b"]}),
        400,
        "one prompt per request",
    ),
    "max_tokens zero": (
        request_bytes("POST", "/v1/completions", {**GOOD, "max_tokens": 0}),
        400,
        "max_tokens",
    ),
    "stream not a bool": (
        request_bytes("POST", "/v1/completions", {**GOOD, "stream": "yes"}),
        400,
        "stream",
    ),
    "other model": (
        request_bytes("POST", "/v1/completions", {**GOOD, "model": "gpt-4"}),
        404,
        "'gpt-4' does not exist",
    ),
    "n": (request_bytes("POST", "/v1/completions", {**GOOD, "n": 2}), 400, "n=2"),
    "stop strings": (
        request_bytes("POST", "/v1/completions", {**GOOD, "stop": ["\n"]}),
        400,
        "stop",
    ),
    "stream_options without stream": (
        request_bytes("POST", "/v1/completions", {**GOOD, "stream_options": {}}),
        400,
        "stream_options",
    ),
    "no messages": (
        request_bytes("POST", "/v1/chat/completions", {"messages": []}),
        400,
        "messages",
    ),
    "message without text": (
        request_bytes("POST", "/v1/chat/completions", {"messages": [{"role": "user"}]}),
        400,
        "messages[0]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_an_openai_error_and_the_server_keeps_serving(serve, case):
    raw, status, fragment = BAD_REQUESTS[case]
    served = serve(unix=True)
    reply = exchange(served.address, raw)
    assert reply.status == status
    error = reply.json()["error"]
    assert fragment in error["message"]
    assert error["code"] == status
    assert error["type"] == "invalid_request_error"
    if status == 405:
        assert reply.headers["allow"] == "POST"
    assert served.engine.submitted == [], "nothing reached the engine"
    good = exchange(served.address, request_bytes("POST", "/v1/completions", GOOD))
    assert good.status == 200


def test_a_request_the_engine_refuses_is_a_400_with_its_reason(serve):
    served = serve()
    served.engine.refusal = "the request needs 9 KV blocks of 16 tokens and the whole cache has 8"
    response = http_post(served.address, "/v1/completions", GOOD)
    assert response.status == 400
    assert "the whole cache has 8" in json.loads(response.read())["error"]["message"]


# --- disconnects and failures ---


def read_until_events(sock: socket.socket, count: int) -> bytes:
    data = b""
    while data.count(b"data: ") < count:
        piece = sock.recv(65536)
        assert piece, "the server closed the stream early"
        data += piece
    return data


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_a_client_that_disconnects_mid_stream_cancels_its_request(serve, unix):
    served = serve(unix=unix, pause_after=2)
    body = {"prompt": "Hi", "max_tokens": 50, "stream": True}
    with connect(served.address) as sock:
        sock.sendall(request_bytes("POST", "/v1/completions", body))
        read_until_events(sock, 2)
        assert served.engine.cancelled == []
    wait_for(lambda: served.engine.cancelled == [0], "the request to be cancelled")
    # The server is still there for the next client.
    assert exchange(served.address, request_bytes("GET", "/health")).status == 200


def test_a_client_that_leaves_before_a_whole_answer_cancels_its_request(serve):
    served = serve(pause_after=1)
    with connect(served.address) as sock:
        sock.sendall(request_bytes("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 9}))
        wait_for(lambda: served.engine.submitted, "the request to reach the engine")
    wait_for(lambda: served.engine.cancelled == [0], "the request to be cancelled")


def test_an_engine_failure_ends_the_streams_with_an_error_and_fails_health(serve):
    served = serve(unix=True, pause_after=2)
    with connect(served.address) as sock:
        body = {"prompt": "Hi", "max_tokens": 50, "stream": True}
        sock.sendall(request_bytes("POST", "/v1/completions", body))
        data = read_until_events(sock, 2)
        served.engine.fail("SchedulerError: your Scheduler gave block 7 to sequences 3 and 5")
        reply = parse_reply(data + receive_all(sock))
    events = reply.events()
    assert "[DONE]" not in events, "a failed stream does not claim to be complete"
    error = json.loads(events[-1])["error"]
    assert "gave block 7 to sequences 3 and 5" in error["message"]
    assert error["code"] == 500
    assert error["type"] == "server_error"

    health = exchange(served.address, request_bytes("GET", "/health"))
    assert health.status == 500
    assert "gave block 7" in health.json()["error"]["message"]
    assert "Traceback" in health.json()["error"]["traceback"]
    later = exchange(served.address, request_bytes("POST", "/v1/completions", GOOD))
    assert later.status == 500
    assert "gave block 7" in later.json()["error"]["message"]


def test_stopping_the_server_cancels_the_requests_in_flight(serve):
    served = serve(unix=True, pause_after=1)
    with connect(served.address) as sock:
        body = {"prompt": "Hi", "max_tokens": 50, "stream": True}
        sock.sendall(request_bytes("POST", "/v1/completions", body))
        read_until_events(sock, 1)
        served.handle.stop()
        assert served.engine.cancelled == [0]
        receive_all(sock)  # the server closed the connection
    assert not served.socket_path.exists()


# --- the Unix socket file ---


def test_a_stale_socket_file_is_replaced_and_removed_on_stop(tokenizer, script):
    engine = FakeEngineThread(script)
    engine.start()
    with tempfile.TemporaryDirectory(prefix="srv") as folder:
        path = Path(folder) / "engine.sock"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()  # a server that died leaves its file behind
        handle = start_in_thread(engine, tokenizer, model_name=MODEL, socket_path=path)
        try:
            assert exchange(handle.address, request_bytes("GET", "/health")).status == 200
            with pytest.raises(ValueError, match="another server is listening"):
                start_in_thread(engine, tokenizer, model_name=MODEL, socket_path=path)
        finally:
            handle.stop()
        assert not path.exists()
        other = Path(folder) / "notes.txt"
        other.write_text("not a socket")
        with pytest.raises(ValueError, match="is not a socket"):
            start_in_thread(engine, tokenizer, model_name=MODEL, socket_path=other)
        assert other.read_text() == "not a socket"
    engine.stop()


def test_it_serves_on_a_socket_the_caller_bound_and_leaves_its_file(tokenizer, script):
    engine = FakeEngineThread(script)
    engine.start()
    with tempfile.TemporaryDirectory(prefix="srv") as folder:
        path = Path(folder) / "graded.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))  # as the grader does, outside the sandbox
        listener.listen(128)
        handle = start_in_thread(engine, tokenizer, model_name=MODEL, sock=listener)
        try:
            assert handle.address == f"unix://{path}"
            reply = exchange(handle.address, request_bytes("POST", "/v1/completions", GOOD))
            assert reply.json()["choices"][0]["text"]
        finally:
            handle.stop()
        assert path.exists(), "the caller made the file; the caller removes it"
    engine.stop()


def test_the_detokenizer_holds_back_a_character_split_across_tokens(tokenizer):
    text = "🙂 héllo — ✓"
    ids = tokenizer.encode(text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer.encode("Say"))
    pieces = [detokenizer.add(token, last=i == len(ids) - 1) for i, token in enumerate(ids)]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert "" in pieces, "the text contains characters that take several tokens"


# --- end to end: the command line, the real engine, the reference scheduler ---


def test_the_command_line_serves_the_reference_scheduler_with_greedy_tokens(tokenizer):
    from runner.llm import load_model
    from runner.serving.engine import greedy_alone

    with tempfile.TemporaryDirectory(prefix="srv") as folder:
        path = Path(folder) / "engine.sock"
        command = [
            sys.executable,
            "-m",
            "runner.serving",
            "--socket",
            str(path),
            "--scheduler-file",
            str(REFERENCE_SOLUTION),
            "--device",
            "cpu",
            "--num-blocks",
            "64",
            "--max-model-len",
            "256",
        ]
        server = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        # Never wait for ever on a server that hangs before it listens.
        watchdog = threading.Timer(120, server.kill)
        watchdog.start()
        try:
            prompt_ids = tokenizer.encode("def parse(text):\n    ")
            reference = greedy_alone(load_model(), prompt_ids, 24, eos_token_id=EOS)
            address = server.stdout.readline().strip()  # printed once it listens
            assert address == f"unix://{path}", address or server.stderr.read()
            body = {"prompt": prompt_ids, "max_tokens": 24, "ignore_eos": True, "stream": True}
            body["return_token_ids"] = True
            reply = exchange(address, request_bytes("POST", "/v1/completions", body))
            assert reply.status == 200
            choices = [chunk["choices"][0] for chunk in chunks_of(reply.events())]
            streamed = [token for choice in choices for token in choice["token_ids"]]
            assert streamed == reference.token_ids
            assert "".join(choice["text"] for choice in choices) == tokenizer.decode(streamed)
            server.send_signal(signal.SIGTERM)
            assert server.wait(30) == 0
            assert not path.exists(), "the socket file is removed on the way out"
        finally:
            watchdog.cancel()
            if server.poll() is None:
                server.kill()
                server.wait()
            server.stdout.close()
            server.stderr.close()
