"""The serving load harness (runner/serving/loadgen/): vLLM's metrics against values worked
by hand, arrival schedules, the HTTP/SSE client over TCP and a Unix socket against a fake
OpenAI-compatible server (tests/runner/fake_openai_server.py), every way a server can
misbehave, the JSON layout, the rate sweep, the SVG plots, the command line and Locust.

Latency checks are lower bounds set by the fake server's delays (a request cannot get its
first token before the server sends it); the only upper bounds are the harness's own
deadlines, with a wide margin.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from runner.serving.loadgen import (
    Endpoint,
    ProtocolError,
    RequestOutput,
    RequestSpec,
    SSEDecoder,
    StreamTimer,
    arrival_offsets,
    definitions,
    find_max_rate,
    latency_cdf_svg,
    load_jsonl,
    parse_slos,
    random_requests,
    request_body,
    run_coroutine,
    run_load,
    run_load_sync,
    summarize,
    sweep_svg,
    time_stream,
    wait_for_server,
)
from runner.serving.loadgen.__main__ import main
from runner.serving.loadgen.http import Timeouts, open_request
from runner.serving.loadgen.stream import ServerReportedError
from runner.serving.loadgen.sweep import SweepPoint, check
from tests.runner.fake_openai_server import (
    Behaviour,
    FakeOpenAIServer,
    fake,
    serving_in_thread,
)
from tests.runner.support import REPO

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def socket_dir():
    # A short path: Unix socket paths are limited to about 100 bytes, pytest's tmp_path is long.
    with tempfile.TemporaryDirectory(prefix="lg", dir="/tmp") as folder:
        yield folder


def served(behaviour: Behaviour | None = None, *, unix_path: str | None = None):
    return FakeOpenAIServer(behaviour, unix_path=unix_path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- metrics, against values worked by hand ---------------------------------------------------


def hand_worked_outputs() -> list[RequestOutput]:
    def done(start, ttft, itl, e2el, tokens, prompt):
        return RequestOutput(
            success=True,
            ttft_s=ttft,
            itl_s=itl,
            e2el_s=e2el,
            output_tokens=tokens,
            prompt_tokens=prompt,
            start_time=start,
        )

    return [
        done(0.0, 0.1, [0.02, 0.02, 0.02], 0.16, 4, 10),  # TPOT 0.06 / 3 = 20 ms
        done(0.1, 0.2, [0.05], 0.25, 2, 20),  # TPOT 50 ms
        done(0.5, 0.3, [], 0.3, 1, 30),  # one token: no TPOT
        done(1.0, 0.4, [0.1] * 4, 0.8, 5, 40),  # TPOT 0.4 / 4 = 100 ms
        # A failure with awful times: it must not move any latency.
        RequestOutput(success=False, error="boom", ttft_s=9.0, e2el_s=9.0, start_time=0.0),
    ]


def test_summary_counts_and_throughputs_leave_failures_out():
    s = summarize(hand_worked_outputs(), 2.0)
    assert (s["completed"], s["failed"]) == (4, 1)
    assert s["total_input_tokens"] == 100
    assert s["total_output_tokens"] == 12
    assert s["request_throughput"] == pytest.approx(2.0)
    assert s["output_throughput"] == pytest.approx(6.0)
    assert s["total_token_throughput"] == pytest.approx(56.0)
    assert s["request_goodput"] is None  # no SLO given
    assert s["max_concurrent_requests"] == 2  # only the first two overlap


def test_summary_latency_statistics_match_hand_computed_values():
    s = summarize(hand_worked_outputs(), 2.0, percentiles=(50, 90, 99, 99.9))
    approx = pytest.approx
    # TTFT 100, 200, 300, 400 ms: p90 at index 2.7 -> 370, p99 at 2.97 -> 397.
    assert s["mean_ttft_ms"] == approx(250)
    assert s["median_ttft_ms"] == approx(250)
    assert s["std_ttft_ms"] == approx(math.sqrt(12500))  # population std
    assert (s["p50_ttft_ms"], s["p90_ttft_ms"], s["p99_ttft_ms"]) == (
        approx(250),
        approx(370),
        approx(397),
    )
    assert s["p99.9_ttft_ms"] == approx(399.7)
    # TPOT 20, 50, 100 ms (the one-token request has none).
    assert s["mean_tpot_ms"] == approx(170 / 3)
    assert s["median_tpot_ms"] == approx(50)
    assert s["std_tpot_ms"] == approx(
        math.sqrt(((20 - 170 / 3) ** 2 + (50 - 170 / 3) ** 2 + (100 - 170 / 3) ** 2) / 3)
    )
    assert s["p90_tpot_ms"] == approx(90)
    assert s["p99_tpot_ms"] == approx(99)
    # ITL: every gap of every request pooled: 20, 20, 20, 50, 100, 100, 100, 100 ms.
    assert s["mean_itl_ms"] == approx(63.75)
    assert s["median_itl_ms"] == approx(75)
    assert s["p99_itl_ms"] == approx(100)
    # E2EL 160, 250, 300, 800 ms: p99 at index 2.97 -> 300 + 0.97 * 500.
    assert s["mean_e2el_ms"] == approx(377.5)
    assert s["median_e2el_ms"] == approx(275)
    assert s["p99_e2el_ms"] == approx(785)


@pytest.mark.parametrize(
    ("slos", "good"),
    [
        ({"ttft": 250, "tpot": 60}, 2),  # the 300 and 400 ms TTFTs miss
        ({"tpot": 60}, 3),  # the one-token request counts TPOT 0, as in vLLM
        ({"e2el": 300}, 3),  # a bound is met with equality
        ({"ttft": 50}, 0),
    ],
)
def test_goodput_counts_requests_that_meet_every_slo(slos, good):
    assert summarize(hand_worked_outputs(), 2.0, slos=slos)["request_goodput"] == pytest.approx(
        good / 2.0
    )


def test_a_metric_without_samples_is_null_not_zero():
    s = summarize([RequestOutput(success=False, error="x")], 1.0, slos={"ttft": 100})
    assert s["completed"] == 0 and s["failed"] == 1
    assert s["mean_ttft_ms"] is None and s["p99_tpot_ms"] is None and s["median_itl_ms"] is None
    assert s["request_goodput"] == 0


def test_summary_reports_only_the_chosen_metrics_and_percentiles():
    s = summarize(hand_worked_outputs(), 1.0, percentiles=(50,), metrics=("ttft",))
    assert "p50_ttft_ms" in s and "p99_ttft_ms" not in s and "mean_tpot_ms" not in s


def test_goodput_slos_parse_like_vllms_flag_and_reject_nonsense():
    assert parse_slos(["ttft:200", "tpot:50"]) == {"ttft": 200.0, "tpot": 50.0}
    assert parse_slos("e2el:1000") == {"e2el": 1000.0}
    with pytest.raises(ValueError, match="unknown SLO 'itl'"):
        parse_slos(["itl:10"])
    with pytest.raises(ValueError, match="NAME:MILLISECONDS"):
        parse_slos(["ttft=200"])
    with pytest.raises(ValueError, match="non-negative"):
        parse_slos(["ttft:-1"])


def test_every_metric_has_a_one_sentence_definition():
    keys = {d["key"] for d in definitions()}
    assert {"ttft", "tpot", "itl", "e2el", "request_goodput", "failed"} <= keys
    assert all(d["definition"].endswith(".") for d in definitions())


# -- arrival schedules ------------------------------------------------------------------------


def rng(seed: int = 7) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_infinite_rate_sends_everything_at_once():
    assert arrival_offsets(5, rate=math.inf, rng=rng()).tolist() == [0.0] * 5


def test_infinite_burstiness_is_a_fixed_rate():
    np.testing.assert_allclose(
        arrival_offsets(4, rate=2.0, burstiness=math.inf, rng=rng()), [0.5, 1.0, 1.5, 2.0]
    )


def test_poisson_gaps_have_mean_one_over_rate_and_unit_coefficient_of_variation():
    gaps = np.diff(arrival_offsets(20_000, rate=4.0, rng=rng(), rescale=False), prepend=0.0)
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_gaps_keep_the_mean_and_scale_the_variance_by_one_over_burstiness(burstiness):
    gaps = np.diff(
        arrival_offsets(20_000, rate=4.0, burstiness=burstiness, rng=rng(), rescale=False),
        prepend=0.0,
    )
    assert gaps.mean() == pytest.approx(0.25, rel=0.05)
    assert gaps.var() == pytest.approx(1 / (4.0**2 * burstiness), rel=0.15)


def test_rescaled_schedules_end_at_count_over_rate_and_replay_with_the_seed():
    first = arrival_offsets(50, rate=5.0, burstiness=0.5, rng=rng(1))
    assert first[-1] == pytest.approx(10.0)
    assert np.all(np.diff(first) >= 0)
    np.testing.assert_array_equal(first, arrival_offsets(50, rate=5.0, burstiness=0.5, rng=rng(1)))
    assert not np.array_equal(first, arrival_offsets(50, rate=5.0, burstiness=0.5, rng=rng(2)))


@pytest.mark.parametrize(("rate", "burstiness"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_schedules_reject_non_positive_rates_and_burstiness(rate, burstiness):
    with pytest.raises(ValueError, match="positive"):
        arrival_offsets(3, rate=rate, burstiness=burstiness, rng=rng())


def test_run_coroutine_works_inside_a_running_event_loop_too():
    # A notebook, or a test session driving a browser with Playwright's sync API, already runs
    # a loop on this thread, where asyncio.run refuses.
    async def outer():
        asyncio.get_running_loop()
        return run_coroutine(asyncio.sleep(0, result=7))

    assert run_coroutine(outer()) == 7


def test_max_concurrency_caps_requests_in_flight_at_the_server():
    async def scenario():
        async with served(Behaviour(ttft_s=0.05, tokens=2)) as server:
            specs = random_requests(10, input_len=4, output_len=2)
            capped = await run_load(server.base_url, specs, model="m", max_concurrency=3)
            capped_peak, server.peak_in_flight = server.peak_in_flight, 0
            free = await run_load(server.base_url, specs, model="m")
            return capped, capped_peak, free, server.peak_in_flight

    capped, capped_peak, free, free_peak = run_coroutine(scenario())
    assert capped_peak == 3
    assert capped.summary()["max_concurrent_requests"] <= 3
    assert max(o.queued_s for o in capped.outputs) > 0  # some waited for a slot
    assert free_peak == 10


# -- the client against the fake server -------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_streamed_requests_are_timed_and_counted(transport, socket_dir):
    path = os.path.join(socket_dir, "engine.sock") if transport == "unix" else None

    async def scenario():
        async with served(Behaviour(ttft_s=0.05, itl_s=0.01), unix_path=path) as server:
            specs = random_requests(3, input_len=6, output_len=5, seed=3)
            return await run_load(server.base_url, specs, model="tiny"), server.bodies

    result, bodies = run_coroutine(scenario())
    assert [o.error for o in result.outputs] == ["", "", ""]
    for output in result.outputs:
        assert output.ttft_s >= 0.05
        assert output.e2el_s >= 0.05 + 4 * 0.01
        assert len(output.itl_s) == 4
        assert output.output_tokens == 5 and output.output_tokens_from == "token_ids"
        assert output.token_ids == [1000, 1001, 1002, 1003, 1004]
        assert output.generated_text == " tok0 tok1 tok2 tok3 tok4"
        assert output.prompt_tokens == 6  # the server's usage
    assert all(b["model"] == "tiny" and b["max_tokens"] == 5 for b in bodies)


@pytest.mark.parametrize(
    ("behaviour", "source"),
    [(fake(token_ids=False), "usage"), (fake(token_ids=False, usage=False), "chunks")],
)
def test_output_tokens_fall_back_to_usage_then_to_chunks(behaviour, source):
    async def scenario():
        async with served() as server:
            spec = RequestSpec("one two three", 4, extra=behaviour)
            return await run_load(server.base_url, [spec], model="m")

    result = run_coroutine(scenario())
    (output,) = result.outputs
    assert (output.success, output.output_tokens, output.output_tokens_from) == (True, 4, source)
    assert output.token_ids is None
    assert result.output_tokens_from() == {source: 1}


def test_the_chat_api_sends_messages_and_reads_deltas():
    async def scenario():
        async with served(Behaviour(mode="chunked")) as server:
            spec = RequestSpec("hello there", 3)
            result = await run_load(server.base_url, [spec], model="m", api="chat")
            return result, server.bodies[0]

    result, body = run_coroutine(scenario())
    assert body["messages"] == [{"role": "user", "content": "hello there"}]
    assert body["max_completion_tokens"] == 3
    assert result.outputs[0].generated_text == " tok0 tok1 tok2"
    assert result.endpoint == "/v1/chat/completions"


def test_request_bodies_stream_greedily_with_usage_and_token_ids():
    body = request_body(RequestSpec([1, 2, 3], 8), api="completions", model="m")
    assert body == {
        "model": "m",
        "prompt": [1, 2, 3],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        "ignore_eos": True,
    }
    trimmed = RequestSpec("hi", 8, ignore_eos=False, extra={"return_token_ids": None, "top_k": 1})
    body = request_body(trimmed, api="completions", model="m")
    assert "return_token_ids" not in body and "ignore_eos" not in body and body["top_k"] == 1
    with pytest.raises(ValueError, match="chat API takes text"):
        request_body(RequestSpec([1, 2], 8), api="chat", model="m")


@pytest.mark.parametrize(
    ("prompt", "max_tokens"), [("", 4), ([], 4), ([1, "a"], 4), ("hi", 0), ("hi", 2.5)]
)
def test_a_request_spec_rejects_empty_prompts_and_bad_lengths(prompt, max_tokens):
    with pytest.raises(ValueError):
        RequestSpec(prompt, max_tokens)


def test_random_prompts_have_the_asked_length_and_replay_with_the_seed():
    specs = random_requests(3, input_len=12, output_len=7, seed=5)
    assert [len(s.prompt.split()) for s in specs] == [12, 12, 12]
    assert {s.max_tokens for s in specs} == {7} and {s.tokens for s in specs} == {12}
    assert specs == random_requests(3, input_len=12, output_len=7, seed=5)


def test_a_jsonl_workload_names_the_bad_line(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a b c", "max_tokens": 3}\n\n{"prompt": [5, 6]}\n')
    specs = load_jsonl(good, default_max_tokens=9)
    assert [(s.prompt, s.max_tokens) for s in specs] == [("a b c", 3), ([5, 6], 9)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_jsonl(bad, default_max_tokens=4)


# -- misbehaving servers: failed requests with named errors, always within the bounds ---------


def test_every_misbehaviour_fails_its_request_with_a_named_error():
    modes = {
        "hang": "RequestTimeout: no answer",
        "close_mid_stream": "ProtocolError: the connection closed in the middle of an event",
        "malformed": "ProtocolError: event 2 is not JSON",
        "http_500": "HTTPStatusError: HTTP 500 Internal Server Error",
        "stream_error": "ServerReportedError: the server streamed an error: out of KV blocks",
        "not_http": "ProtocolError: not an HTTP/1.x status line",
    }

    async def scenario():
        async with served() as server:
            specs = [RequestSpec("x y", 5, extra=fake(mode=mode)) for mode in modes]
            specs.append(RequestSpec("x y", 5, extra=fake(mode="chunked")))
            began = time.monotonic()
            result = await run_load(server.base_url, specs, model="m", timeout_s=1.0)
            return result, time.monotonic() - began

    result, took = run_coroutine(scenario())
    for output, expected in zip(result.outputs, modes.values(), strict=False):
        assert not output.success
        assert output.error.startswith(expected), output.error
    assert result.outputs[-1].success  # a chunked stream is fine
    assert took < 10  # the hung request stopped at its 1 s timeout
    summary = result.summary()
    assert (summary["completed"], summary["failed"]) == (1, 6)


def test_a_server_that_stalls_mid_stream_hits_the_whole_request_timeout():
    async def scenario():
        async with served(Behaviour(itl_s=30.0)) as server:
            return await run_load(server.base_url, [RequestSpec("a", 3)], model="m", timeout_s=0.3)

    (output,) = run_coroutine(scenario()).outputs
    assert output.error.startswith("RequestTimeout: the whole request took longer than 0.3 s")


def test_the_first_byte_timeout_names_itself():
    async def scenario():
        async with served(Behaviour(mode="hang")) as server:
            return await run_load(
                server.base_url, [RequestSpec("a", 3)], model="m", first_byte_timeout_s=0.2
            )

    (output,) = run_coroutine(scenario()).outputs
    assert "within 0.2 s of sending the request" in output.error


def test_at_the_overall_deadline_requests_in_flight_queued_or_unsent_are_cancelled():
    async def scenario():
        async with served(Behaviour(ttft_s=30.0)) as server:
            specs = random_requests(10, input_len=2, output_len=2)
            began = time.monotonic()
            result = await run_load(
                server.base_url,
                specs,
                model="m",
                rate=20.0,
                burstiness=math.inf,  # sent at 0.05, 0.1, ... 0.5 s
                max_concurrency=1,
                overall_timeout_s=0.35,
            )
            return result, time.monotonic() - began

    result, took = run_coroutine(scenario())
    errors = [o.error for o in result.outputs]
    assert all(e.startswith("cancelled at the deadline (overall_timeout_s=0.35)") for e in errors)
    assert errors[0].endswith("in flight")
    assert "waiting for a free --max-concurrency slot" in errors[1]
    assert errors[-1].endswith("before it was sent")
    assert result.summary()["failed"] == 10
    assert took < 5


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_nothing_listening_fails_every_request_with_connect_failed(where, socket_dir):
    url = (
        f"http://127.0.0.1:{free_port()}" if where == "tcp" else f"unix://{socket_dir}/missing.sock"
    )
    result = run_load_sync(url, random_requests(2, input_len=2, output_len=2), model="m")
    for output in result.outputs:
        assert output.error.startswith("ConnectFailed: ")
        assert "refused" in output.error or "no Unix socket" in output.error


async def raw_answer(answer: bytes) -> tuple[bytes | Exception, asyncio.base_events.Server]:
    """A server that sends `answer` as is, whatever it is asked; reads the client's body."""

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    endpoint = Endpoint(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        async with open_request(endpoint, "GET", "/", timeouts=Timeouts(total_s=5)) as response:
            return await response.read(), server
    except Exception as exc:
        return exc, server
    finally:
        server.close()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "bad chunk size line",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloEXTRA\r\n",
            "longer than its size",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "after 5 of 10 body bytes"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "is not a number"),
        (b"", "closed the connection without answering"),
        (b"HTTP/1.1 200 OK\r\nContent-", "in the middle of the response head"),
    ],
)
def test_malformed_http_raises_a_protocol_error_naming_the_fault(answer, expected):
    result, _ = run_coroutine(raw_answer(answer))
    assert isinstance(result, ProtocolError) and expected in str(result), result


def test_chunked_bodies_and_interim_answers_are_read():
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    )
    result, _ = run_coroutine(raw_answer(answer))
    assert result == b"hello world"


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("unix:///tmp/e.sock", "Unix socket /tmp/e.sock"),
        ("http://10.0.0.5:8000/api", "10.0.0.5:8000"),
        ("http://localhost", "localhost:80"),
    ],
)
def test_endpoints_parse_tcp_and_unix_addresses(url, where):
    assert Endpoint(url).where == where
    assert Endpoint("http://h:1/api/").prefix == "/api"


@pytest.mark.parametrize(
    "url", ["unix://relative.sock", "ftp://host", "localhost:8000", "http://h:x"]
)
def test_endpoints_reject_what_is_not_an_address(url):
    with pytest.raises(ValueError):
        Endpoint(url)


def test_wait_for_server_polls_until_it_answers_and_names_the_last_error():
    async def scenario():
        async with served() as server:
            models = await wait_for_server(server.base_url, timeout_s=5)
        with pytest.raises(TimeoutError, match="ConnectFailed"):
            await wait_for_server(f"http://127.0.0.1:{free_port()}", timeout_s=0.3)
        return models

    assert run_coroutine(scenario())["data"][0]["id"] == "fake"


def test_run_load_sync_works_inside_a_running_event_loop():
    # A notebook calls the sync wrapper from inside its loop: it runs on a thread and loop
    # of its own. The server runs in another thread, since the calling loop is blocked.
    with serving_in_thread() as server:

        async def cell():
            return run_load_sync(server.base_url, [RequestSpec("a", 2)], model="m")

        result = run_coroutine(cell())
    assert result.outputs[0].success


# -- SSE and stream timing, without a server --------------------------------------------------


def test_sse_decoder_joins_split_lines_skips_comments_and_joins_multiline_data():
    decoder = SSEDecoder()
    events = []
    for piece in [
        b": ping\r\n\r\nda",
        b'ta: {"a"',
        b": 1}\r\n\r\nevent: x\nid: 3\n",
        b"data: l1\ndata:l2\n\n",
    ]:
        events += decoder.feed(piece)
    assert events == ['{"a": 1}', "l1\nl2"]
    assert decoder.close() == []


def test_sse_decoder_accepts_a_final_done_without_its_blank_line_but_not_a_cut_event():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.close() == ["[DONE]"]
    cut = SSEDecoder()
    cut.feed(b'data: {"choices": [')
    with pytest.raises(ProtocolError, match="in the middle of an event"):
        cut.close()


def test_sse_decoder_rejects_oversized_events_and_bad_utf8():
    with pytest.raises(ProtocolError, match="larger than 10 bytes"):
        SSEDecoder(max_event_bytes=10).feed(b"data: 0123456789abc\n")
    with pytest.raises(ProtocolError, match="not UTF-8"):
        SSEDecoder().feed(b"data: \xff\xfe\n")


def sse(*payloads) -> list[bytes]:
    return [
        b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n"
        for p in payloads
    ]


def clock(*times):
    ticks = iter(times)
    return lambda: next(ticks)


def test_time_stream_follows_vllms_timing_rules():
    pieces = sse(
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},  # TTFT, as in vLLM
        {"choices": [{"delta": {"content": "Hi"}, "token_ids": [7]}]},
        {"choices": [{"delta": {"content": " there"}, "token_ids": [8, 9]}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}},
        b"[DONE]",
    )
    output = time_stream(pieces, api="chat", start=10.0, clock=clock(10.2, 10.3, 10.45, 10.5, 10.6))
    assert output.ttft_s == pytest.approx(0.2)
    assert output.itl_s == pytest.approx([0.1, 0.15])
    assert output.e2el_s == pytest.approx(0.45)  # the usage chunk carries no choice
    assert (output.output_tokens, output.output_tokens_from) == (3, "token_ids")
    assert output.prompt_tokens == 4 and output.generated_text == "Hi there"


def test_time_stream_stops_reading_at_done():
    def body():
        yield from sse({"choices": [{"text": "a"}]}, b"[DONE]")
        raise AssertionError("read past [DONE]")

    assert time_stream(body(), api="completions", start=0.0, clock=clock(1, 2)).success


@pytest.mark.parametrize(
    ("pieces", "error", "match"),
    [
        (sse({"choices": [{"text": "a"}]}), ProtocolError, "without `data: \\[DONE\\]`"),
        (sse(b"[DONE]"), ProtocolError, "before any token"),
        (sse({"error": {"message": "oom"}}), ServerReportedError, "oom"),
        (sse({"choices": [{"text": 5}]}), ProtocolError, "not a string"),
        (sse({"choices": [{"text": "a", "token_ids": ["x"]}]}), ProtocolError, "list of ints"),
        (sse([1, 2]), ProtocolError, "not a JSON object"),
    ],
)
def test_time_stream_raises_on_incomplete_or_malformed_streams(pieces, error, match):
    with pytest.raises(error, match=match):
        time_stream(pieces, api="completions", start=0.0, clock=clock(*range(1, 10)))


def test_a_stream_timer_refuses_an_unknown_api():
    with pytest.raises(ValueError, match="completions, chat"):
        StreamTimer(api="embeddings", start=0.0)


# -- results as JSON --------------------------------------------------------------------------


def test_the_json_result_has_vllms_field_names():
    async def scenario():
        async with served() as server:
            specs = random_requests(3, input_len=3, output_len=3)
            specs.append(RequestSpec("a", 3, extra=fake(mode="http_500")))
            return await run_load(server.base_url, specs, model="tiny", rate=50.0, seed=4)

    result = run_coroutine(scenario())
    data = json.loads(json.dumps(result.to_json(slos={"ttft": 1000}), allow_nan=False))
    vllm_fields = {
        "date", "backend", "model_id", "num_prompts", "request_rate", "burstiness",
        "max_concurrency", "duration", "completed", "failed", "total_input_tokens",
        "total_output_tokens", "request_throughput", "request_goodput", "output_throughput",
        "total_token_throughput", "input_lens", "output_lens", "ttfts", "itls", "latencies",
        "start_times", "generated_texts", "errors", "max_concurrent_requests",
        "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms",
        "mean_tpot_ms", "median_tpot_ms", "std_tpot_ms", "p99_tpot_ms",
        "mean_itl_ms", "median_itl_ms", "std_itl_ms", "p99_itl_ms",
        "mean_e2el_ms", "median_e2el_ms", "std_e2el_ms", "p99_e2el_ms",
    }  # fmt: skip
    assert vllm_fields <= set(data)
    assert (data["backend"], data["model_id"], data["request_rate"]) == ("openai", "tiny", 50.0)
    assert (data["completed"], data["failed"]) == (3, 1)
    assert data["output_lens"] == [3, 3, 3, 0]
    assert data["errors"][3].startswith("HTTPStatusError: HTTP 500")
    assert data["output_tokens_from"] == {"token_ids": 3}
    assert result.to_json(detailed=False).keys().isdisjoint({"ttfts", "errors"})
    infinite = run_load_sync(f"http://127.0.0.1:{free_port()}", [RequestSpec("a", 1)], model="m")
    assert infinite.to_json()["request_rate"] == "inf"  # as vLLM writes it


# -- the rate sweep ---------------------------------------------------------------------------


def synthetic(boundary: float, calls: list[float] | None = None):
    """A server whose p99 TTFT is 10 ms per req/s: it meets p99_ttft_ms <= 10 * boundary up
    to `boundary` req/s."""

    def run_at(rate: float) -> dict:
        if calls is not None:
            calls.append(rate)
        return {"completed": 10, "failed": 0, "p99_ttft_ms": 10.0 * rate}

    return run_at


def test_the_sweep_brackets_the_highest_rate_that_meets_the_slo():
    calls: list[float] = []
    found = find_max_rate(synthetic(7.3, calls), {"p99_ttft_ms": 73}, low=1, high=20, steps=10)
    assert 7.3 * 0.99 <= found.best_rate <= 7.3
    assert calls[:2] == [1, 20] and len(calls) == 12
    assert [p.rate for p in found.points] == sorted(calls)
    assert all(p.met == (p.rate <= 7.3) for p in found.points)
    assert found.points[-1].misses == ["p99_ttft_ms 200 > 73"]


def test_the_sweep_stops_when_low_misses_or_high_meets():
    missed = find_max_rate(synthetic(0.5), {"p99_ttft_ms": 5}, low=1, high=20)
    assert missed.best_rate is None and len(missed.points) == 1
    easy = find_max_rate(synthetic(50), {"p99_ttft_ms": 500}, low=1, high=20)
    assert easy.best_rate == 20 and len(easy.points) == 2


def test_a_rate_with_failed_requests_misses_unless_the_slo_allows_failures():
    summary = {
        "completed": 9,
        "failed": 1,
        "p99_ttft_ms": 10.0,
        "request_goodput": 4.0,
        "duration": 2.0,
    }
    assert check(summary, {"p99_ttft_ms": 50}) == ["failed_fraction 0.1 > 0"]
    assert check(summary, {"p99_ttft_ms": 50, "failed_fraction": 0.2}) == []
    # goodput_fraction = 4 req/s * 2 s / 10 requests
    assert check(summary, {"goodput_fraction": 0.9, "failed_fraction": 1}) == [
        "goodput_fraction 0.8 < 0.9"
    ]
    assert (
        "not measured"
        in check({"completed": 0, "failed": 0, "p99_ttft_ms": None}, {"p99_ttft_ms": 5})[0]
    )


# -- plots ------------------------------------------------------------------------------------


def test_latency_cdfs_are_valid_svg_with_a_line_per_run_and_metric():
    svg = latency_cdf_svg(
        {"static <b>&": hand_worked_outputs(), "continuous": hand_worked_outputs()[:2]},
        title="CDF & co",
    )
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert len(root.findall(f"{SVG}polyline")) == 6
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "CDF & co" in texts and "● static <b>&" in texts


def test_many_samples_are_drawn_through_quantiles():
    outputs = [
        RequestOutput(success=True, ttft_s=i / 1000, e2el_s=i / 500, output_tokens=3)
        for i in range(1, 5000)
    ]
    line = ET.fromstring(latency_cdf_svg({"big": outputs})).find(f"{SVG}polyline")
    assert len(line.get("points").split()) == 201


def test_the_sweep_plot_marks_met_and_missed_rates_and_the_slo():
    points = [
        SweepPoint(rate=r, summary={"output_throughput": 100 * r, "p99_ttft_ms": 10 * r}, met=r < 8)
        for r in (1, 4, 8, 16)
    ]
    root = ET.fromstring(sweep_svg(points, slo={"p99_ttft_ms": 73}))
    circles = root.findall(f"{SVG}circle")
    assert len(circles) == 8
    assert sum(c.get("fill") == "white" for c in circles) == 4  # 8 and 16 missed, on both panels
    assert any(line.get("stroke-dasharray") for line in root.findall(f"{SVG}line"))


# -- the command line -------------------------------------------------------------------------


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner.serving.loadgen", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_cli_runs_a_random_workload_and_saves_vllm_json_and_a_plot(tmp_path):
    out, plot = tmp_path / "out.json", tmp_path / "cdf.svg"
    with serving_in_thread(Behaviour(ttft_s=0.01)) as server:
        done = cli(
            "--base-url", server.base_url, "--model", "tiny", "--dataset", "random",
            "--num-prompts", "6", "--input-len", "8", "--output-len", "4",
            "--request-rate", "100", "--max-concurrency", "4", "--goodput", "ttft:5000",
            "tpot:5000", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,99", "--seed", "3",
            "--save-result", str(out), "--plot", str(plot),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Serving Benchmark Result" in done.stdout
    assert "P99 TTFT (ms):" in done.stdout and "Request goodput (req/s):" in done.stdout
    data = json.loads(out.read_text())
    assert (data["completed"], data["failed"], data["max_concurrency"]) == (6, 0, 4)
    assert data["request_goodput"] == pytest.approx(data["request_throughput"])
    assert {"p50_ttft_ms", "p99_e2el_ms"} <= set(data) and "p90_ttft_ms" not in data
    assert data["input_lens"] == [8] * 6 and data["output_lens"] == [4] * 6
    ET.fromstring(plot.read_text())


def test_the_cli_reads_jsonl_over_a_unix_socket_with_the_chat_api(tmp_path, socket_dir):
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text('{"prompt": "hello there", "max_tokens": 3}\n{"prompt": "bye"}\n')
    out = tmp_path / "out.json"
    with serving_in_thread(unix_path=os.path.join(socket_dir, "s")) as server:
        status = main(
            [
                "--base-url", server.base_url, "--model", "m",
                "--endpoint", "/v1/chat/completions", "--dataset", str(dataset),
                "--output-len", "2", "--save-result", str(out),
            ]
        )  # fmt: skip
    assert status == 0
    data = json.loads(out.read_text())
    assert (data["backend"], data["completed"], data["output_lens"]) == ("openai-chat", 2, [3, 2])


def test_the_cli_sweeps_rates_against_an_slo(tmp_path, capsys):
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.svg"
    with serving_in_thread() as server:
        status = main(
            [
                "--base-url", server.base_url, "--model", "m", "--num-prompts", "3",
                "--output-len", "2", "--sweep", "5:50", "--sweep-steps", "1",
                "--slo", "p99_ttft_ms:10000", "--metric-percentiles", "50",
                "--save-result", str(out), "--plot", str(plot),
            ]
        )  # fmt: skip
    assert status == 0
    assert "Highest rate meeting the SLO: 50.000 req/s" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["best_rate"] == 50 and [p["rate"] for p in data["points"]] == [5, 50]
    assert "p99_ttft_ms" in data["points"][0]["summary"]  # added for the SLO
    ET.fromstring(plot.read_text())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--goodput", "latency:5"], "unknown SLO"),
        (["--endpoint", "/v1/embeddings"], "use /v1/completions"),
        (["--sweep", "10:1", "--slo", "p99_ttft_ms:1"], "LOW:HIGH"),
        (["--slo", "p99_ttft_ms:1"], "--slo is for --sweep"),
    ],
)
def test_the_cli_explains_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--base-url", "http://127.0.0.1:9", "--model", "m", *args])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_cli_exits_1_when_nothing_completed(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--base-url", url, "--model", "m", "--num-prompts", "2"]) == 1
    assert "ConnectFailed" in capsys.readouterr().out


# -- Locust -----------------------------------------------------------------------------------


def test_the_locustfile_reports_ttft_and_tpot_as_custom_metrics(tmp_path):
    # Never import locust here: importing it monkey-patches the whole test process with gevent
    # (threads, sockets, asyncio's running-loop bookkeeping), and later tests fail in odd ways.
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed (it is in the dev extra)")
    with serving_in_thread(Behaviour(ttft_s=0.02, itl_s=0.005)) as server:
        done = subprocess.run(
            [
                sys.executable, "-m", "locust", "-f", str(REPO / "bench" / "locustfile.py"),
                "--headless", "-u", "2", "-r", "2", "-t", "3s", "--host", server.base_url,
                "--model", "m", "--input-len", "4", "--output-len", "6",
                "--csv", str(tmp_path / "run"), "--only-summary",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {
        (row[0], row[1]): row
        for row in (
            line.split(",") for line in (tmp_path / "run_stats.csv").read_text().splitlines()
        )
    }
    ttft, tpot = rows[("METRIC", "ttft")], rows[("METRIC", "tpot")]
    assert int(ttft[2]) > 0 and int(tpot[2]) > 0  # request counts
    assert float(ttft[6]) >= 20  # min TTFT (ms) >= the server's 20 ms delay
    # Mean TPOT near the 5 ms per token it streams at, not ~0: tokens timed as they arrive.
    assert float(tpot[5]) >= 2.5
    assert rows[("POST", "/v1/completions")][3] == "0"  # no failures
