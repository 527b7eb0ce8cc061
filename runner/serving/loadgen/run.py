"""Run a workload against an OpenAI-compatible server and collect what each request saw.

    result = run_load_sync("unix:///run/engine.sock", requests, model="tiny", rate=8.0,
                           max_concurrency=32, timeout_s=60, overall_timeout_s=300)
    result.summary(slos={"ttft": 200, "tpot": 50})   # vLLM's field names
    json.dump(result.to_json(), file)                 # vLLM's --save-result layout

The run always finishes within its bounds and never raises because of the server: each
request has its own timeouts; at `overall_timeout_s` every request still running is
cancelled and every one not yet sent is dropped, both counted as failed with "cancelled at
the deadline"; a refused connection, an HTTP error, a cut or malformed stream becomes a
failed request whose `error` names what happened. Bad arguments (a negative rate, an
unknown API) raise ValueError before anything is sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import numpy as np

from runner.serving.loadgen.arrivals import arrival_offsets, concurrency_limit
from runner.serving.loadgen.http import Endpoint, Timeouts, expect_ok, get_json, open_request
from runner.serving.loadgen.metrics import (
    DEFAULT_PERCENTILES,
    LATENCY_METRICS,
    RequestOutput,
    output_lens,
    summarize,
)
from runner.serving.loadgen.sse import iter_sse
from runner.serving.loadgen.stream import StreamTimer
from runner.serving.loadgen.workload import RequestSpec, request_body

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
BACKENDS = {"completions": "openai", "chat": "openai-chat"}  # vLLM's --backend names


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def send_request(
    endpoint: Endpoint,
    spec: RequestSpec,
    *,
    api: str,
    model: str,
    timeouts: Timeouts,
    path: str | None = None,
) -> RequestOutput:
    """Send one streaming request and time it; any failure becomes a failed RequestOutput."""
    body = request_body(spec, api=api, model=model)
    start = time.perf_counter()
    timer = StreamTimer(api=api, start=start)
    try:
        async with open_request(
            endpoint, "POST", path or PATHS[api], json_body=body, timeouts=timeouts
        ) as response:
            await expect_ok(response)
            async for data in iter_sse(response):
                if timer.on_data(data, time.perf_counter()):
                    break
        return timer.finish(prompt_len=spec.tokens)
    except Exception as exc:
        return RequestOutput(
            success=False, error=describe(exc), prompt_tokens=spec.tokens, start_time=start
        )


T = TypeVar("T")


@dataclass
class LoadResult:
    """Every request's RequestOutput, in workload order, and the run's settings."""

    outputs: list[RequestOutput]
    duration_s: float
    api: str
    model_id: str
    base_url: str
    endpoint: str
    request_rate: float
    burstiness: float
    max_concurrency: int | None
    seed: int
    date: str = field(default_factory=lambda: datetime.now().strftime("%Y%m%d-%H%M%S"))

    def summary(
        self,
        *,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        slos: dict[str, float] | None = None,
        metrics: Sequence[str] = LATENCY_METRICS,
    ) -> dict[str, Any]:
        return summarize(
            self.outputs, self.duration_s, percentiles=percentiles, slos=slos, metrics=metrics
        )

    def output_tokens_from(self) -> dict[str, int]:
        """How many completed requests counted their output tokens which way."""
        counts: dict[str, int] = {}
        for o in self.outputs:
            if o.success:
                counts[o.output_tokens_from] = counts.get(o.output_tokens_from, 0) + 1
        return counts

    def to_json(
        self,
        *,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        slos: dict[str, float] | None = None,
        metrics: Sequence[str] = LATENCY_METRICS,
        detailed: bool = True,
    ) -> dict[str, Any]:
        """The layout of vLLM's --save-result (plus base_url, endpoint, seed, goodput SLOs
        and output_tokens_from); `detailed` adds the per-request lists (vLLM's
        --save-detailed). Infinite numbers are written "inf", as vLLM writes request_rate."""
        result: dict[str, Any] = {
            "date": self.date,
            "backend": BACKENDS[self.api],
            "model_id": self.model_id,
            "tokenizer_id": None,
            "num_prompts": len(self.outputs),
            "request_rate": self.request_rate,
            "burstiness": self.burstiness,
            "max_concurrency": self.max_concurrency,
            "base_url": self.base_url,
            "endpoint": self.endpoint,
            "seed": self.seed,
            "goodput_slos_ms": slos or None,
            "output_tokens_from": self.output_tokens_from(),
        }
        result.update(self.summary(percentiles=percentiles, slos=slos, metrics=metrics))
        if detailed:
            result.update(
                {
                    "input_lens": [o.prompt_tokens for o in self.outputs],
                    "output_lens": output_lens(self.outputs),
                    "ttfts": [o.ttft_s for o in self.outputs],
                    "itls": [o.itl_s for o in self.outputs],
                    "latencies": [o.e2el_s for o in self.outputs],
                    "start_times": [o.start_time for o in self.outputs],
                    "queue_times": [o.queued_s for o in self.outputs],
                    "generated_texts": [o.generated_text for o in self.outputs],
                    "errors": [o.error for o in self.outputs],
                }
            )
        return _json_safe(result)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


async def run_load(
    endpoint: Endpoint | str,
    requests: Iterable[RequestSpec],
    *,
    model: str,
    api: str = "completions",
    rate: float = math.inf,
    burstiness: float = 1.0,
    max_concurrency: int | None = None,
    seed: int = 0,
    timeout_s: float = 600.0,
    overall_timeout_s: float | None = None,
    connect_timeout_s: float = 10.0,
    first_byte_timeout_s: float | None = None,
    path: str | None = None,
) -> LoadResult:
    """Send `requests` on the arrival schedule of `rate` and `burstiness` (arrivals.py),
    at most `max_concurrency` at a time, and wait for all of them, but never longer than
    `overall_timeout_s` (None: no run-wide deadline; each request still stops at
    `timeout_s`). `path` overrides the API's usual path."""
    if isinstance(endpoint, str):
        endpoint = Endpoint(endpoint)
    if api not in PATHS:
        raise ValueError(f"api must be 'completions' or 'chat', not {api!r}")
    specs = list(requests)
    if not specs:
        raise ValueError("the workload holds no requests")
    for spec in specs:
        request_body(spec, api=api, model=model)  # a bad prompt for this API fails now
    if overall_timeout_s is not None and not overall_timeout_s > 0:
        raise ValueError("overall_timeout_s must be a positive number of seconds")
    timeouts = Timeouts(
        total_s=timeout_s, connect_s=connect_timeout_s, first_byte_s=first_byte_timeout_s
    )
    offsets = arrival_offsets(
        len(specs), rate=rate, burstiness=burstiness, rng=np.random.default_rng(seed)
    )
    limit = concurrency_limit(max_concurrency)
    cancelled = (
        f"cancelled at the deadline (overall_timeout_s={overall_timeout_s:g})"
        if overall_timeout_s is not None
        else "cancelled with the run"
    )
    outputs: list[RequestOutput | None] = [None] * len(specs)
    tasks: list[asyncio.Task] = []
    start = time.perf_counter()

    async def one(index: int, spec: RequestSpec) -> None:
        arrived = time.perf_counter()
        sent = None
        try:
            async with limit:
                sent = time.perf_counter()
                output = await send_request(
                    endpoint, spec, api=api, model=model, timeouts=timeouts, path=path
                )
        except asyncio.CancelledError:
            now = time.perf_counter()
            where = (
                f"after {now - sent:.3g} s in flight"
                if sent is not None
                else "while waiting for a free --max-concurrency slot"
            )
            outputs[index] = RequestOutput(
                error=f"{cancelled} {where}",
                prompt_tokens=spec.tokens,
                start_time=sent or arrived,
            )
            raise
        output.queued_s = output.start_time - arrived
        outputs[index] = output

    async def issue() -> None:
        for index, (spec, offset) in enumerate(zip(specs, offsets, strict=True)):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index, spec)))
        if tasks:
            await asyncio.wait(tasks)

    issuer = asyncio.create_task(issue())
    try:
        await asyncio.wait([issuer], timeout=overall_timeout_s)
    finally:  # the deadline, or whoever awaits run_load cancelled it: stop every request
        if not issuer.done():
            for task in (issuer, *tasks):
                task.cancel()
        await asyncio.gather(issuer, *tasks, return_exceptions=True)
    duration = time.perf_counter() - start
    final = [
        output
        if output is not None
        else RequestOutput(
            error=f"{cancelled} before it was sent",
            prompt_tokens=spec.tokens,
        )
        for output, spec in zip(outputs, specs, strict=True)
    ]
    return LoadResult(
        outputs=final,
        duration_s=duration,
        api=api,
        model_id=model,
        base_url=endpoint.base_url,
        endpoint=path or PATHS[api],
        request_rate=rate,
        burstiness=burstiness,
        max_concurrency=max_concurrency,
        seed=seed,
    )


def run_load_sync(*args: Any, **kwargs: Any) -> LoadResult:
    """run_load from synchronous code (see run_coroutine)."""
    return run_coroutine(run_load(*args, **kwargs))


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, also where this thread already runs an event loop (a Jupyter notebook, or
    a test session that drives a browser with Playwright's sync API): then on a thread of its
    own, since one thread cannot run two loops."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def wait_for_server(
    endpoint: Endpoint | str, *, timeout_s: float, path: str = "/v1/models"
) -> Any:
    """Poll GET `path` until it answers 200 (a server still loading its model refuses or
    answers 503); returns the parsed body. Raises TimeoutError naming the last error."""
    if isinstance(endpoint, str):
        endpoint = Endpoint(endpoint)
    deadline = time.monotonic() + timeout_s
    last = "no attempt"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"{endpoint.where} did not answer GET {path} within {timeout_s:g} s ({last})"
            )
        try:
            return await get_json(endpoint, path, timeouts=Timeouts(total_s=min(left, 10.0)))
        except Exception as exc:
            last = describe(exc)
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
