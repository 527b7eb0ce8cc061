"""When each request is sent, as `vllm bench serve` schedules them, and the client-side
concurrency cap.

- `rate=inf`: every request at time 0 (all at once);
- `burstiness=inf`: a fixed rate, one request every 1 / rate seconds;
- otherwise gaps drawn from a gamma distribution with shape `burstiness` and scale
  1 / (rate * burstiness), so the mean gap is 1 / rate whatever the burstiness:
  `burstiness=1` is a Poisson process (exponential gaps), below 1 burstier, above 1 more
  regular (the gaps' variance is 1 / (rate^2 * burstiness)).

Like vLLM (since 2025), the drawn schedule is then rescaled so that the last request is sent
at exactly count / rate: without it, the sum of random gaps misses its target by a percent
or two and throughput moves with the seed. `rescale=False` keeps the raw draws.

The gaps come from a seeded numpy Generator, so one seed replays one schedule.
`concurrency_limit` is vLLM's --max-concurrency: requests still arrive on schedule, but at
most that many are in flight; the others wait for a slot on the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import numpy as np


def arrival_offsets(
    count: int,
    *,
    rate: float,
    burstiness: float = 1.0,
    rng: np.random.Generator,
    rescale: bool = True,
) -> np.ndarray:
    """Seconds from the start of the run at which each of `count` requests is sent."""
    if count < 0:
        raise ValueError("count must not be negative")
    if not rate > 0:
        raise ValueError(f"the request rate must be positive (or inf for all at once), not {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be positive (or inf for a fixed rate), not {burstiness}")
    if math.isinf(rate) or count == 0:
        return np.zeros(count)
    if math.isinf(burstiness):
        gaps = np.full(count, 1.0 / rate)
    else:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=count)
    offsets = np.cumsum(gaps)
    if rescale and offsets[-1] > 0:
        offsets *= (count / rate) / offsets[-1]
    return offsets


def concurrency_limit(max_concurrency: int | None) -> Any:
    """An async context manager that admits at most `max_concurrency` holders (None: all)."""
    if max_concurrency is None:
        return contextlib.nullcontext()
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
        raise ValueError(f"max_concurrency must be a whole number, not {max_concurrency!r}")
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
    return asyncio.Semaphore(max_concurrency)
