"""A load harness for OpenAI-compatible LLM servers (vLLM, SGLang, TensorRT-LLM's server,
the project's own engine), measuring what vLLM's serving benchmark measures, under the same
names: TTFT, TPOT, ITL, E2EL, throughputs and goodput under SLOs.

Stdlib asyncio and numpy only, so it runs on air-gapped GPU workers. From the command line
(`python -m runner.serving.loadgen --help`) against any server; as a library from the
`serving` lab's grader, whose engine listens on a Unix socket:

    from runner.serving.loadgen import random_requests, run_load_sync
    requests = random_requests(64, input_len=128, output_len=64, seed=1)
    result = run_load_sync("unix:///tmp/engine.sock", requests, model="tiny", rate=8.0,
                           timeout_s=60, overall_timeout_s=300)
    result.summary(slos={"ttft": 200, "tpot": 50})["p99_ttft_ms"]

Modules: `http` (the client and its errors), `sse` (event streams), `workload` (requests
and bodies), `arrivals` (schedules), `stream` (timing one stream), `metrics` (definitions
and statistics), `run`, `sweep` (highest rate meeting an SLO), `plots` (SVG).
"""

from runner.serving.loadgen.arrivals import arrival_offsets, concurrency_limit
from runner.serving.loadgen.http import (
    ConnectFailed,
    Endpoint,
    HTTPStatusError,
    ProtocolError,
    RequestTimeout,
    Timeouts,
)
from runner.serving.loadgen.metrics import (
    DEFINITIONS,
    RequestOutput,
    definitions,
    parse_slos,
    summarize,
)
from runner.serving.loadgen.plots import latency_cdf_svg, sweep_svg
from runner.serving.loadgen.run import (
    LoadResult,
    run_coroutine,
    run_load,
    run_load_sync,
    send_request,
    wait_for_server,
)
from runner.serving.loadgen.sse import SSEDecoder, iter_sse
from runner.serving.loadgen.stream import StreamTimer, time_stream
from runner.serving.loadgen.sweep import SweepPoint, SweepResult, find_max_rate, parse_slo
from runner.serving.loadgen.workload import (
    RequestSpec,
    load_jsonl,
    random_requests,
    request_body,
)

__all__ = [
    "DEFINITIONS",
    "ConnectFailed",
    "Endpoint",
    "HTTPStatusError",
    "LoadResult",
    "ProtocolError",
    "RequestOutput",
    "RequestSpec",
    "RequestTimeout",
    "SSEDecoder",
    "StreamTimer",
    "SweepPoint",
    "SweepResult",
    "Timeouts",
    "arrival_offsets",
    "concurrency_limit",
    "definitions",
    "find_max_rate",
    "iter_sse",
    "latency_cdf_svg",
    "load_jsonl",
    "parse_slo",
    "parse_slos",
    "random_requests",
    "request_body",
    "run_coroutine",
    "run_load",
    "run_load_sync",
    "send_request",
    "summarize",
    "sweep_svg",
    "time_stream",
    "wait_for_server",
]
