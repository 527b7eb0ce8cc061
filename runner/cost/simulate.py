"""A discrete-event simulation of an LLM serving fleet: requests arrive, a router sends each to
a replica, every replica runs continuous batching under a KV-cache budget, and each request's
first-token and finish times come out.

Granularity is the engine iteration: one event per replica step, never one per token per
request. A step admits waiting requests (first come, first served; while the batch has room,
their KV cache fits and the step's prefill budget lasts), prefills their prompts, decodes one
token for every running sequence, and takes `EngineModel.step_time` (the roofline of
runner.cost.roofline). A request's first token comes at the end of the step that prefilled it,
its last `output - 1` steps later. Each request is touched O(1) times, so the cost is
O(steps + requests): 10K requests/s for minutes of traffic simulate in seconds
(docs/benchmarks/simulator.md has the measured figure).

Modelling choices, each a simplification a real engine does not make:

- a request reserves KV cache for its whole prompt + output when admitted (no preemption;
  vLLM allocates as it goes and preempts when full);
- the KV bytes a step reads count each running sequence at its average context,
  prompt + output / 2, so a step's time changes only when the batch does. The total KV read
  over a request's life is the same as with its true, growing context;
- a prompt is prefilled in one step (no chunking); a step's prefill budget limits how many
  prompts join it, and a prompt longer than the budget joins alone;
- a step that admits nothing repeats identically until a sequence finishes or one can join,
  so a full replica jumps over those steps at once (one event, many steps);
- routing: `round_robin`, `least_loaded` (the fewest requests queued + running, decided at
  arrival) or `shared_queue` (one FIFO that replicas pull from when they have room, as in an
  M/M/c queue).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from runner.cost.roofline import Deployment

ROUTING = ("round_robin", "least_loaded", "shared_queue")
INF = math.inf


@dataclass(frozen=True)
class EngineModel:
    """What one replica's engine step costs, and what bounds its batch."""

    weight_read_s: float  # reading every weight once
    kv_read_s_per_token: float  # reading one token of KV cache
    compute_s_per_token: float  # 2 x params FLOPs for one token
    overhead_s: float
    kv_budget_tokens: int
    max_batch: int
    max_prefill_tokens: int

    @classmethod
    def from_deployment(cls, deployment: Deployment, *, max_batch: int) -> EngineModel:
        return cls(
            weight_read_s=deployment.weight_bytes / deployment.bandwidth,
            kv_read_s_per_token=deployment.kv_bytes_per_token / deployment.bandwidth,
            compute_s_per_token=deployment.model.flops_per_token / deployment.flops,
            overhead_s=deployment.assumptions.step_overhead_s,
            kv_budget_tokens=deployment.kv_budget_tokens,
            max_batch=max_batch,
            max_prefill_tokens=deployment.assumptions.max_prefill_tokens,
        )

    def step_time(self, *, decode: int, context_tokens: float, prefill_tokens: int) -> float:
        memory = self.weight_read_s + self.kv_read_s_per_token * context_tokens
        compute = self.compute_s_per_token * (decode + prefill_tokens)
        return self.overhead_s + (memory if memory > compute else compute)


@dataclass(frozen=True)
class RunningAtStart:
    """Requests already running on each replica when the simulation starts (a warm start, so
    that a short simulation begins near steady state instead of with an empty fleet): their
    replica, prompt and output lengths, and the output tokens each has still to produce."""

    replica: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    remaining: np.ndarray

    def __len__(self) -> int:
        return len(self.replica)


@dataclass
class StepLog:
    """Every replica's steps as runs of identical steps: run j is `count[j]` steps of
    `step_s[j]` seconds each on replica `replica[j]`, starting at time `start[j]` with step
    number `first_step[j]`. Sorted by replica, then time. From it, the time of any step's end,
    so of any token (a request's n-th token comes at the end of step admit_step + n - 1)."""

    replica: np.ndarray
    first_step: np.ndarray
    start: np.ndarray
    step_s: np.ndarray
    count: np.ndarray

    def step_end(self, replica: np.ndarray, step: np.ndarray) -> np.ndarray:
        """End times of the given steps of the given replicas (inf for steps never run)."""
        keys = self.replica * _STEP_KEY + self.first_step
        at = np.searchsorted(keys, replica * _STEP_KEY + step, side="right") - 1
        at = np.clip(at, 0, max(0, len(keys) - 1))
        if not len(keys):
            return np.full(len(step), INF)
        offset = step - self.first_step[at]
        ok = (self.replica[at] == replica) & (offset >= 0) & (offset < self.count[at])
        return np.where(ok, self.start[at] + (offset + 1) * self.step_s[at], INF)

    def steps_done_by(self, replica: np.ndarray, time: float) -> np.ndarray:
        """How many steps each given replica had finished by `time` (its step numbers below
        the result ended at or before `time`)."""
        done = np.zeros(len(replica), dtype=np.int64)
        if not len(self.replica):
            return done
        # Per replica, the last run that started before `time`.
        time = min(time, _TIME_KEY / 2)
        keys = self.replica * _TIME_KEY + np.minimum(self.start, _TIME_KEY / 2)
        at = np.searchsorted(keys, replica * _TIME_KEY + time, side="left") - 1
        at = np.clip(at, 0, len(keys) - 1)
        mine = (self.replica[at] == replica) & (self.start[at] < time)
        whole = np.floor((time - self.start[at]) / self.step_s[at] + 1e-9).astype(np.int64)
        inside = np.minimum(np.maximum(whole, 0), self.count[at])
        done[mine] = (self.first_step[at] + inside)[mine]
        return done


_STEP_KEY = 1 << 40  # replica x this + step number: a sortable key (steps < 2^40)
_TIME_KEY = 1e7  # replica x this + time: sortable for times below 5e6 s


@dataclass
class FleetRun:
    """Per request: arrival, prompt, output, first_token and finish times (inf when it never
    got there: still queued when the simulation stopped, or `rejected` because its KV cache
    alone exceeds a replica's budget) and the replica that served it (-1: none). For the
    fleet: busy replica-seconds, steps, sequence-seconds (running sequences x time, for the
    mean batch) and events handled; `busy_by_bucket` adds the busy seconds of all replicas per
    `bucket_s` of time."""

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    replica: np.ndarray
    rejected: np.ndarray
    admit_step: np.ndarray  # the replica's step that prefilled the request (-1: none)
    segments: StepLog
    busy_s: float
    steps: int
    events: int
    sequence_s: float
    busy_by_bucket: np.ndarray
    bucket_s: float
    end_s: float
    replicas: int
    engine: EngineModel
    preloaded: int = 0


def simulate_fleet(
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    *,
    engine: EngineModel,
    replicas: int,
    routing: str = "least_loaded",
    stop_at: float | None = None,
    stop_when_all_started: bool = False,
    bucket_s: float = 1.0,
    running_at_start: RunningAtStart | None = None,
) -> FleetRun:
    """Simulate `replicas` copies of `engine` serving the requests (arrival times sorted, in
    seconds from 0; prompt and output lengths in tokens, output >= 1) until every request
    finished or time `stop_at` (default: never stop early), or, with
    `stop_when_all_started`, as soon as every request has its first token (what is left to
    run then only finishes requests: their TTFT is known, and TPOT up to a time is too); from
    an empty fleet or from `running_at_start` (those that do not fit a replica's batch or KV
    budget are dropped)."""
    if routing not in ROUTING:
        raise ValueError(f"routing must be one of {ROUTING}, not {routing!r}")
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    arrival = np.asarray(arrival, dtype=np.float64)
    prompt = np.asarray(prompt, dtype=np.int64)
    output = np.asarray(output, dtype=np.int64)
    count = len(arrival)
    if count and (np.any(np.diff(arrival) < 0) or output.min() < 1 or prompt.min() < 0):
        raise ValueError("arrivals must be sorted, outputs at least 1 token, prompts >= 0")
    if count and arrival[0] < 0:
        raise ValueError("arrivals start at time 0")
    warm = running_at_start
    preloaded = len(warm) if warm is not None else 0
    if warm is not None:
        if np.any(warm.replica < 0) or np.any(warm.replica >= replicas):
            raise ValueError("running_at_start names a replica the fleet does not have")
        if np.any(warm.remaining < 1) or np.any(warm.remaining > warm.output):
            raise ValueError("running_at_start: remaining must be within 1..output")
        arrival = np.concatenate([np.full(preloaded, -1.0), arrival])
        prompt = np.concatenate([np.asarray(warm.prompt, dtype=np.int64), prompt])
        output = np.concatenate([np.asarray(warm.output, dtype=np.int64), output])
    state = _Fleet(arrival, prompt, output, engine, replicas, routing, bucket_s)
    if warm is not None:
        state.warm_start(warm.replica.tolist(), warm.remaining.tolist())
    end = state.run(INF if stop_at is None else float(stop_at), stop_when_all_started)
    by_bucket = np.array(state.buckets)
    replica_of, first_step, start, step_s, runs = (np.array(column) for column in state.log)
    order = np.argsort(replica_of, kind="stable")  # by replica, then (already) by time
    steps_log = StepLog(
        replica=replica_of[order].astype(np.int64),
        first_step=first_step[order].astype(np.int64),
        start=start[order].astype(np.float64),
        step_s=step_s[order].astype(np.float64),
        count=runs[order].astype(np.int64),
    )
    return FleetRun(
        arrival=arrival,
        prompt=prompt,
        output=output,
        first_token=np.array(state.first),
        finish=np.array(state.finish),
        replica=np.array(state.where),
        rejected=np.array(state.rejected, dtype=bool),
        admit_step=np.array(state.admit_step, dtype=np.int64),
        segments=steps_log,
        busy_s=state.busy,
        steps=state.steps,
        events=state.events,
        sequence_s=state.sequence_s,
        busy_by_bucket=by_bucket,
        bucket_s=bucket_s,
        end_s=end,
        replicas=replicas,
        engine=engine,
        preloaded=preloaded,
    )


class _Fleet:
    """The simulation's state and its event loop. Per-replica state lives in lists indexed by
    replica, and the loop reads them through locals: this is the hot path, and attribute
    lookups per step would double its cost."""

    def __init__(self, arrival, prompt, output, engine, replicas, routing, bucket_s) -> None:
        count = len(arrival)
        self.arrival = arrival.tolist()
        self.prompts = prompt.tolist()
        self.outputs = output.tolist()
        self.reserve = (prompt + output).tolist()  # KV tokens a request holds while running
        self.context = (prompt + output / 2.0).tolist()  # its average context, for KV reads
        self.engine = engine
        self.replicas = replicas
        self.routing = routing
        self.bucket_s = bucket_s
        self.first = [INF] * count
        self.finish = [INF] * count
        self.admit_step = [-1] * count
        self.log: tuple[list, list, list, list, list] = ([], [], [], [], [])
        self.where = [-1] * count
        self.rejected = [False] * count
        self.buckets: list[float] = []
        self.busy = 0.0
        self.steps = 0
        self.events = 0
        self.sequence_s = 0.0
        self.running = [0] * replicas
        self.kv_used = [0] * replicas
        self.ctx = [0.0] * replicas
        self.finishing: list[dict[int, list[int]]] = [{} for _ in range(replicas)]
        self.finish_steps: list[list[int]] = [[] for _ in range(replicas)]
        self.load = [0] * replicas  # requests queued + running, for least_loaded
        self.start_events: list[tuple[float, int]] = []
        self.preloaded = 0

    def warm_start(self, replica: list[int], remaining: list[int]) -> None:
        """Put requests 0..len(replica)-1 in their replicas' batches at time 0, each with
        `remaining` output tokens to go (no prefill: they are past it)."""
        e = self.engine
        for i, (r, left) in enumerate(zip(replica, remaining, strict=True)):
            if self.running[r] >= e.max_batch or self.kv_used[r] + self.reserve[i] > (
                e.kv_budget_tokens
            ):
                continue  # does not fit: dropped
            self.running[r] += 1
            self.kv_used[r] += self.reserve[i]
            self.ctx[r] += self.context[i]
            self.load[r] += 1
            self.where[i] = r
            self.first[i] = -1.0
            step = left - 1
            book = self.finishing[r]
            if step in book:
                book[step].append(i)
            else:
                book[step] = [i]
                heapq.heappush(self.finish_steps[r], step)
        self.start_events = [(0.0, r) for r in range(self.replicas) if self.running[r]]
        heapq.heapify(self.start_events)
        self.preloaded = len(replica)

    def run(self, stop: float, when_all_started: bool) -> float:  # noqa: C901 - kept whole for speed
        arr, prompts, outputs = self.arrival, self.prompts, self.outputs
        reserve, context = self.reserve, self.context
        first, finish, where, rejected = self.first, self.finish, self.where, self.rejected
        admit_step = self.admit_step
        log_replica, log_first, log_start, log_step, log_count = self.log
        buckets = self.buckets
        size = 0
        count, replicas = len(arr), self.replicas
        e = self.engine
        max_batch, budget, max_prefill = e.max_batch, e.kv_budget_tokens, e.max_prefill_tokens
        w_s, kv_s, c_s = e.weight_read_s, e.kv_read_s_per_token, e.compute_s_per_token
        overhead = e.overhead_s
        per_bucket = 1.0 / self.bucket_s
        shared = self.routing == "shared_queue"
        least_loaded = self.routing == "least_loaded"
        heappush, heappop, heapreplace = heapq.heappush, heapq.heappop, heapq.heapreplace

        running, kv_used, ctx = self.running, self.kv_used, self.ctx
        finishing, finish_steps, load = self.finishing, self.finish_steps, self.load
        step_no = [0] * replicas
        in_flight = [-1] * replicas  # the step number the step (or run of steps) ends on
        events = list(self.start_events)  # replicas with a warm start step at time 0
        scheduled = [False] * replicas
        for _, r in events:
            scheduled[r] = True
        queues = [deque()] if shared else [deque() for _ in range(replicas)]
        # shared_queue: replicas with nothing to do.
        idle = [r for r in range(replicas - 1, -1, -1) if not scheduled[r]]
        # least_loaded: replicas by their load (queued + running), and the lowest load held.
        by_load: list[set[int]] = [set() for _ in range(max(load) + 2)]
        for r in range(replicas):
            by_load[load[r]].add(r)
        lowest = min(load)
        busy = sequence_s = 0.0
        steps = handled = waiting = 0  # waiting: routed, not yet admitted
        nxt = self.preloaded
        now = 0.0

        while True:
            t_event = events[0][0] if events else INF
            if nxt < count and arr[nxt] <= t_event:
                # Route every arrival up to the next step event: no load changes before it.
                j = nxt
                while j < count and arr[j] <= t_event:
                    a = arr[j]
                    if reserve[j] > budget:
                        rejected[j] = True
                    elif shared:
                        queues[0].append(j)
                        waiting += 1
                        if idle:
                            r = idle.pop()
                            scheduled[r] = True
                            heappush(events, (a, r))
                            t_event = a
                    else:
                        if least_loaded:
                            while not by_load[lowest]:
                                lowest += 1
                            r = by_load[lowest].pop()
                            level = lowest + 1
                            load[r] = level
                            if level == len(by_load):
                                by_load.append(set())
                            by_load[level].add(r)
                        else:
                            r = j % replicas
                        queues[r].append(j)
                        waiting += 1
                        where[j] = r
                        if not scheduled[r]:
                            scheduled[r] = True
                            heappush(events, (a, r))
                            t_event = a
                    j += 1
                nxt = j
                continue
            if not events:
                break
            # Peek, not pop: the replica's next step replaces this entry (one heap operation
            # per step instead of two).
            now, r = events[0]
            if now > stop or (when_all_started and nxt == count and not waiting):
                break
            handled += 1

            # 1. The step (or run of identical steps) that ends now: its finishers leave.
            last = in_flight[r]
            if last >= 0:
                done = finishing[r].pop(last, None)
                if done is not None:
                    heappop(finish_steps[r])
                    used, held = kv_used[r], ctx[r]
                    for i in done:
                        finish[i] = now
                        used -= reserve[i]
                        held -= context[i]
                    kv_used[r], ctx[r] = used, held
                    gone = len(done)
                    running[r] -= gone
                    if least_loaded:
                        level = load[r]
                        by_load[level].discard(r)
                        level -= gone
                        load[r] = level
                        by_load[level].add(r)
                        if level < lowest:
                            lowest = level
                in_flight[r] = -1

            # 2. The next step starts now: admit, first come first served.
            queue = queues[0] if shared else queues[r]
            run = decode = running[r]
            prefill = 0
            admitted = None
            if queue and run < max_batch:
                used, held = kv_used[r], ctx[r]
                while queue and run < max_batch:
                    i = queue[0]
                    need = reserve[i]
                    if used + need > budget:
                        break
                    p = prompts[i]
                    if admitted is None:
                        admitted = [i]
                    elif prefill + p > max_prefill:
                        break
                    else:
                        admitted.append(i)
                    queue.popleft()
                    waiting -= 1
                    run += 1
                    used += need
                    held += context[i]
                    prefill += p
                    where[i] = r
                kv_used[r], ctx[r] = used, held
                running[r] = run
            if run == 0:
                heappop(events)
                scheduled[r] = False
                if shared:
                    idle.append(r)
                continue

            memory = w_s + kv_s * ctx[r]
            compute = c_s * (decode + prefill)
            dt = overhead + (memory if memory > compute else compute)
            s = step_no[r]
            if admitted is not None:
                end = now + dt
                book = finishing[r]
                for i in admitted:
                    first[i] = end
                    admit_step[i] = s
                    f = s + outputs[i] - 1
                    if f in book:
                        book[f].append(i)
                    else:
                        book[f] = [i]
                        heappush(finish_steps[r], f)
                k = 1
            else:
                # A pure decode step repeats until a sequence finishes: jump there at once
                # when nothing can join before then (the batch is full, or the head of the
                # queue does not fit in the KV cache).
                k = finish_steps[r][0] - s + 1
                if (
                    k > 1
                    and run < max_batch
                    and not (queue and kv_used[r] + reserve[queue[0]] > budget)
                ):
                    k = 1
            span = k * dt
            log_replica.append(r)
            log_first.append(s)
            log_start.append(now)
            log_step.append(dt)
            log_count.append(k)
            in_flight[r] = s + k - 1
            step_no[r] = s + k
            busy += span
            steps += k
            sequence_s += run * span
            bucket = int(now * per_bucket)
            last_bucket = int((now + span) * per_bucket)
            if last_bucket >= size:
                buckets.extend([0.0] * (last_bucket + 1 - size))
                size = last_bucket + 1
            if last_bucket == bucket:
                buckets[bucket] += span
            else:  # the step crosses a bucket boundary: split it (rare: steps are short)
                edge = now
                for b in range(bucket, last_bucket + 1):
                    upto = min(now + span, (b + 1) * self.bucket_s)
                    buckets[b] += upto - edge
                    edge = upto
            heapreplace(events, (now + span, r))

        self.busy, self.steps, self.events, self.sequence_s = busy, steps, handled, sequence_s
        return now
