"""A Locust user for an OpenAI-compatible server, reporting TTFT and TPOT (ms) as custom
metrics next to Locust's own request times, since the roadmap's serving project names Locust.

    .venv/bin/pip install locust
    .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8000 --model tiny \\
        --headless -u 32 -r 4 -t 60s --csv var/locust/run

Each user sends streaming requests back to back (random prompts of --input-len words,
--output-len tokens, greedy, ignore_eos) to --endpoint. Locust's stats then show three rows:
the POST itself (time to the response headers), and `METRIC ttft` and `METRIC tpot`, whose
"response times" are the TTFT and TPOT of each completed request. Timing and the stream's
parsing are the load harness's own (runner.serving.loadgen.stream.time_stream), so these
numbers follow vLLM's definitions like `python -m runner.serving.loadgen` does; that tool
is the one to use for percentiles, goodput and sweeps, this file for Locust's UI and ramps.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from locust import HttpUser, events, task

# Locust puts this file's folder on sys.path, not the repository's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.serving.loadgen.run import describe  # noqa: E402
from runner.serving.loadgen.stream import time_stream  # noqa: E402
from runner.serving.loadgen.workload import random_requests, request_body  # noqa: E402


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--model", default="model", help="the model name the server expects")
    parser.add_argument("--endpoint", default="/v1/completions", help="or /v1/chat/completions")
    parser.add_argument("--input-len", type=int, default=128, help="prompt words (~tokens)")
    parser.add_argument("--output-len", type=int, default=128, help="tokens per request")


def _metric(environment, name: str, milliseconds: float) -> None:
    environment.events.request.fire(
        request_type="METRIC",
        name=name,
        response_time=milliseconds,
        response_length=0,
        exception=None,
        context={},
    )


def _as_they_arrive(raw):
    """The body's bytes as the network delivers them. requests' iter_content(chunk_size=None)
    would wait for the end of a body that is not chunked, and so hide every token's time."""
    while piece := raw.read1(64 * 1024):
        yield piece


class StreamingCompletionUser(HttpUser):
    @task
    def stream_completion(self) -> None:
        options = self.environment.parsed_options
        api = "chat" if options.endpoint.rstrip("/").endswith("chat/completions") else "completions"
        spec = random_requests(
            1,
            input_len=options.input_len,
            output_len=options.output_len,
            seed=random.randrange(2**32),
        )[0]
        body = request_body(spec, api=api, model=options.model)
        start = time.perf_counter()
        with self.client.post(
            options.endpoint, json=body, stream=True, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                output = time_stream(
                    _as_they_arrive(response.raw),
                    api=api,
                    start=start,
                    prompt_len=spec.tokens,
                )
            except Exception as exc:
                response.failure(describe(exc))
                return
            response.success()
        _metric(self.environment, "ttft", output.ttft_s * 1000)
        if output.tpot_s is not None:
            _metric(self.environment, "tpot", output.tpot_s * 1000)
