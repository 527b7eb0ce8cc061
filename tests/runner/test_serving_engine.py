"""The serving engine (runner/serving/engine/): the reference scheduler and the static baseline
give the tokens a request gets alone, under preemption too; the batch limits hold; the static
baseline waits for its whole batch and is limited by its reservations; every rule the engine
checks catches a scheduler that breaks it, with a message naming the rule; the engine thread
delivers events in order, cancels, and reports a failure to everyone waiting.

Most tests use a fake model: its next token is a hash of every token of the sequence, read
back from a paged cache it keeps by block table, so a scheduler or block manager that
corrupts blocks gives wrong tokens, as the real model would. The last tests run the
committed Llama through PagedLlama.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import threading

import pytest
import torch

from runner.serving.engine import (
    EngineFailure,
    EngineThread,
    LLMEngine,
    ReservingBlockManager,
    ScheduledBatch,
    SchedulerError,
    Sequence,
    StaticBatchScheduler,
    StepInput,
)
from tests.conftest import REPO

SERVING = REPO / "notebooks" / "serving"


def load_solution(name: str):
    """A module of notebooks/serving/ (not a package). The reference is registered under the
    name wrong_solutions.py loads it by, so both share its classes."""
    module_name = "serving_reference_solution" if name == "reference_solution" else name
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, SERVING / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


reference = load_solution("reference_solution")
wrong = load_solution("wrong_solutions")

VOCAB = 101


def fake_next(tokens: list[int]) -> int:
    """The fake model: a rolling hash of the whole sequence (order matters) and its length."""
    h = 0
    for token in tokens:
        h = (h * 31 + token + 1) % 1_000_003
    return (h + len(tokens)) % VOCAB


def fake_expected(prompt: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(fake_next(tokens))
    return tokens[len(prompt) :]


class FakeRunner:
    """Writes each token into its slot of a paged cache and computes the next token from what
    it reads back through the block table: stale or foreign slots give wrong tokens."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.vocab_size = VOCAB
        self.cache = [[0] * block_size for _ in range(num_blocks)]
        self.steps: list[list[StepInput]] = []

    def forward(self, items) -> torch.Tensor:
        self.steps.append(list(items))
        size = self.block_size
        logits = torch.zeros(len(items), VOCAB)
        for row, item in enumerate(items):
            for offset, token in enumerate(item.token_ids):
                position = item.start_position + offset
                self.cache[item.block_table[position // size]][position % size] = token
            end = item.start_position + len(item.token_ids)
            context = [self.cache[item.block_table[p // size]][p % size] for p in range(end)]
            logits[row, fake_next(context)] = 1.0
        return logits


def prompts(count: int, *, seed: int = 0, low: int = 1, high: int = 20) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randint(low, high))] for _ in range(count)]


def paged_engine(
    *,
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    max_model_len: int = 64,
    scheduler_class=None,
    block_manager_class=None,
    eos_token_id: int | None = None,
    checked_limits: dict[str, int] | None = None,
    **engine_options,
) -> LLMEngine:
    """The reference solution (or the classes given) on the fake model. `checked_limits`
    are the engine's own max_num_seqs / max_num_batched_tokens, to check the batches against
    tighter limits than the scheduler follows."""
    block_manager = (block_manager_class or reference.BlockManager)(num_blocks, block_size)
    scheduler = (scheduler_class or reference.Scheduler)(
        block_manager, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens
    )
    return LLMEngine(
        FakeRunner(num_blocks, block_size),
        scheduler,
        eos_token_id=eos_token_id,
        max_model_len=max_model_len,
        **(checked_limits or {}),
        **engine_options,
    )


def static_engine(
    *,
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    max_model_len: int = 64,
    reserve_tokens: int | None = None,
    scheduler_class=StaticBatchScheduler,
) -> LLMEngine:
    scheduler = scheduler_class(
        ReservingBlockManager(num_blocks, block_size),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        reserve_tokens=max_model_len if reserve_tokens is None else reserve_tokens,
    )
    return LLMEngine(
        FakeRunner(num_blocks, block_size),
        scheduler,
        eos_token_id=None,
        max_model_len=max_model_len,
    )


def lengths(count: int, *, seed: int = 1, low: int = 1, high: int = 30) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


# --- correct schedulers give correct tokens ---


def test_the_fake_model_gives_wrong_tokens_when_two_sequences_share_a_block():
    # What the engine's checks guard against, shown on the fake model itself.
    runner = FakeRunner(num_blocks=4, block_size=4)
    a, b = [5, 6, 7], [8, 9, 10]
    runner.forward([StepInput(a, 0, [0]), StepInput(b, 0, [0])])  # b overwrites a's slots
    logits = runner.forward([StepInput([fake_next(a)], 3, [0])])
    assert int(logits.argmax()) != fake_expected(a, 2)[1]


@pytest.mark.parametrize("make_engine", [paged_engine, static_engine], ids=["reference", "static"])
def test_it_gives_every_request_the_tokens_it_gets_alone(make_engine):
    engine = make_engine()
    requests, limits = prompts(20), lengths(20)
    outputs = engine.generate(requests, max_tokens=limits)
    assert outputs == [fake_expected(p, n) for p, n in zip(requests, limits, strict=True)]
    assert not engine.has_unfinished()
    assert engine.scheduler.block_manager.num_free_blocks == 64  # every block given back


def test_the_reference_and_the_static_baseline_agree():
    requests, limits = prompts(12, seed=3), lengths(12, seed=4)
    paged = paged_engine().generate(requests, max_tokens=limits)
    static = static_engine().generate(requests, max_tokens=limits)
    assert paged == static


def test_preemption_under_a_tiny_cache_keeps_outputs_correct():
    engine = paged_engine(num_blocks=12, block_size=4, max_num_seqs=6, max_model_len=40)
    requests, limits = prompts(10, seed=5, low=3, high=10), lengths(10, seed=6, low=15, high=30)
    outputs = engine.generate(requests, max_tokens=limits)
    assert engine.num_preemptions > 0
    assert sum(stats.num_preempted for stats in engine.stats) == engine.num_preemptions
    assert outputs == [fake_expected(p, n) for p, n in zip(requests, limits, strict=True)]
    assert engine.scheduler.block_manager.num_free_blocks == 12


def test_the_reference_preempts_the_newest_and_puts_it_back_first_in_line():
    engine = paged_engine(num_blocks=4, block_size=2)
    oldest = engine.add_request([1, 2, 3, 4], max_tokens=5)
    newest = engine.add_request([5, 6, 7, 8], max_tokens=5)
    engine.step()  # both prefilled: every block is used
    later = engine.add_request([9, 9], max_tokens=5)
    engine.step()  # the oldest needs a block for its next token
    assert engine.stats[-1].num_preempted == 1
    assert newest.status == "waiting" and newest.num_computed == 0
    assert list(engine.scheduler.waiting) == [newest, later]
    assert engine.scheduler.running == [oldest]


def test_a_request_that_needs_the_whole_cache_still_runs():
    # The reference's watermark must not keep it out for ever.
    engine = paged_engine(num_blocks=5, block_size=4, max_model_len=21)
    assert engine.generate([[1] * 17, [2] * 3], max_tokens=4) == [
        fake_expected([1] * 17, 4),
        fake_expected([2] * 3, 4),
    ]


def test_max_num_seqs_and_max_num_batched_tokens_hold():
    engine = paged_engine(max_num_seqs=3, max_num_batched_tokens=24)
    requests = prompts(12, seed=7, low=5, high=20) + [[3] * 30]  # one over the budget alone
    engine.generate(requests, max_tokens=5)
    for items in engine.runner.steps:
        assert len(items) <= 3
        prefills = [item for item in items if item.start_position == 0]
        assert len(prefills) == 1 or sum(len(item.token_ids) for item in prefills) <= 24
    assert max(len(items) for items in engine.runner.steps) == 3  # the limit is reached
    assert any(len(item.token_ids) == 30 for items in engine.runner.steps for item in items)


def test_the_reference_admits_new_requests_while_others_run():
    engine = paged_engine(max_num_seqs=4)
    engine.generate(prompts(8, seed=8), max_tokens=[2, 20, 20, 20, 5, 5, 5, 5])
    assert any(stats.num_prefill and stats.num_decode for stats in engine.stats)


class WatchedStatic(StaticBatchScheduler):
    """Notes any batch admitted while a sequence of the previous batch is unfinished."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch: list[Sequence] = []
        self.early: list[int] = []

    def schedule(self) -> ScheduledBatch:
        batch = super().schedule()
        if batch.prefill:
            # The engine, not this scheduler, marks sequences finished.
            self.early += [seq.seq_id for seq in self.batch if not seq.is_finished]
            self.batch = list(batch.prefill)
        return batch


def test_the_static_baseline_admits_a_batch_only_when_the_last_one_finished():
    engine = static_engine(max_num_seqs=4, scheduler_class=WatchedStatic)
    requests, limits = prompts(10, seed=9), [1, 30, 2, 3] * 2 + [4, 5]
    assert engine.generate(requests, max_tokens=limits) == [
        fake_expected(p, n) for p, n in zip(requests, limits, strict=True)
    ]
    assert engine.scheduler.early == []
    assert sum(1 for stats in engine.stats if stats.num_prefill) == 3  # 4 + 4 + 2
    assert all(not (stats.num_prefill and stats.num_decode) for stats in engine.stats)


def test_the_static_baselines_reservations_limit_its_batch():
    # 8 blocks of 4; each sequence reserves 16 tokens = 4 blocks: two fit, not max_num_seqs.
    engine = static_engine(num_blocks=8, block_size=4, max_num_seqs=8, reserve_tokens=16)
    requests = prompts(6, seed=10, low=2, high=4)
    assert engine.generate(requests, max_tokens=3) == [fake_expected(p, 3) for p in requests]
    assert max(stats.num_prefill for stats in engine.stats) == 2
    assert max(stats.blocks_used for stats in engine.stats) == 8


def test_the_static_baseline_refuses_a_reservation_larger_than_the_cache():
    with pytest.raises(ValueError, match="reserve_tokens=64 is more than the whole KV cache"):
        static_engine(num_blocks=4, block_size=4, reserve_tokens=64)


def test_it_stops_at_the_end_of_sequence_token_unless_told_to_ignore_it():
    prompt = [4, 2]
    expected = fake_expected(prompt, 10)
    eos = expected[3]
    first = expected.index(eos)
    engine = paged_engine(eos_token_id=eos)
    stopping = engine.add_request(prompt, max_tokens=10)
    ignoring = engine.add_request(prompt, max_tokens=10, ignore_eos=True)
    events = []
    while engine.has_unfinished():
        events += engine.step()
    assert stopping.output_ids == expected[: first + 1]
    assert stopping.finish_reason == "stop"
    assert ignoring.output_ids == expected and ignoring.finish_reason == "length"
    ends = [event for event in events if event.finished]
    assert [(e.seq_id, e.token_id, e.finish_reason) for e in ends] == [
        (stopping.seq_id, eos, "stop"),
        (ignoring.seq_id, expected[-1], "length"),
    ]
    assert [e.token_id for e in events if e.seq_id == stopping.seq_id] == stopping.output_ids


def test_an_aborted_request_gives_its_blocks_back_and_is_never_scheduled_again():
    engine = paged_engine()
    kept = engine.add_request([1, 2, 3], max_tokens=6)
    dropped = engine.add_request([4, 5, 6, 7, 8], max_tokens=30)
    engine.step()
    engine.abort(dropped.seq_id)
    engine.abort(12345)  # unknown ids are ignored
    while engine.has_unfinished():
        assert all(event.seq_id == kept.seq_id for event in engine.step())
    assert dropped.finish_reason == "abort" and len(dropped.output_ids) == 1
    assert kept.output_ids == fake_expected([1, 2, 3], 6)
    assert engine.scheduler.block_manager.num_free_blocks == 64


def test_stats_describe_each_step():
    engine = paged_engine(max_num_seqs=2)
    engine.generate(prompts(3, seed=11, low=4, high=4), max_tokens=3)
    assert engine.num_steps == len(engine.stats) == 6  # 2 at once: 1 + 2 decodes, twice
    first = engine.stats[0]
    assert (first.num_prefill, first.num_decode, first.waiting) == (2, 0, 1)
    assert first.batched_tokens == 8 and first.blocks_used == 2
    assert [s.batched_tokens for s in engine.stats[1:3]] == [2, 2]
    assert all(a.time <= b.time for a, b in zip(engine.stats, engine.stats[1:], strict=False))
    assert all(stats.duration_s >= 0 for stats in engine.stats)


def test_the_stats_list_is_capped():
    engine = paged_engine(stats_limit=8)
    engine.generate([[1]], max_tokens=40)
    assert engine.num_steps == 40 and 8 <= len(engine.stats) <= 10
    assert engine.stats[-1].num_decode == 1


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "message"),
    [
        ([], 4, "the prompt is empty"),
        ([1, 2], 0, "max_tokens must be at least 1"),
        ([1] * 60, 8, "more than max_model_len=64"),
        ([VOCAB], 4, f"token id {VOCAB} is outside the vocabulary"),
        ([1, "2"], 4, "must be token ids"),
    ],
)
def test_it_rejects_a_request_that_cannot_run(prompt, max_tokens, message):
    engine = paged_engine()
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, max_tokens=max_tokens)
    assert not engine.has_unfinished()


def test_it_rejects_a_request_larger_than_the_whole_cache():
    engine = paged_engine(num_blocks=4, block_size=4, max_model_len=64)
    with pytest.raises(ValueError, match="needs 5 KV blocks of 4 tokens and the whole cache has 4"):
        engine.add_request([1] * 10, max_tokens=8)
    engine.add_request([1] * 10, max_tokens=7)  # 16 positions: exactly the cache


def test_it_needs_the_limits_and_a_block_manager_matching_the_cache():
    class Bare:
        block_manager = reference.BlockManager(8, 4)

    with pytest.raises(ValueError, match="keep it as an attribute of your Scheduler"):
        LLMEngine(FakeRunner(8, 4), Bare(), eos_token_id=None, max_model_len=16)
    scheduler = reference.Scheduler(
        reference.BlockManager(16, 4), max_num_seqs=2, max_num_batched_tokens=8
    )
    with pytest.raises(ValueError, match="BlockManager has num_blocks=16 but the model's KV"):
        LLMEngine(FakeRunner(8, 4), scheduler, eos_token_id=None, max_model_len=16)


# --- every rule catches a scheduler that breaks it ---


class ForgetsToForget(reference.Scheduler):
    def finish(self, seq):
        pass  # the sequence stays in running, and is decoded again


class DecodesNewcomers(reference.Scheduler):
    def schedule(self):
        batch = super().schedule()
        return ScheduledBatch(decode=batch.decode + batch.prefill, preempted=batch.preempted)


class PrefillsAgain(reference.Scheduler):
    def schedule(self):
        batch = super().schedule()
        return ScheduledBatch(prefill=batch.prefill + batch.decode, preempted=batch.preempted)


class SchedulesTwice(reference.Scheduler):
    def schedule(self):
        batch = super().schedule()
        batch.decode += batch.decode[:1]
        return batch


class PrefillsAndDecodes(reference.Scheduler):
    def schedule(self):
        batch = super().schedule()
        batch.prefill += batch.decode[:1]
        return batch


class SchedulesAStranger(reference.Scheduler):
    def schedule(self):
        batch = super().schedule()
        batch.prefill.append(Sequence(999, [1, 2], max_tokens=1))
        return batch


class ReturnsATuple(reference.Scheduler):
    def schedule(self):
        batch = super().schedule()
        return batch.prefill, batch.decode


class ReturnsIds(reference.Scheduler):
    def schedule(self):
        batch = super().schedule()
        return ScheduledBatch(prefill=[seq.seq_id for seq in batch.prefill])


class HidesItsPreemptions(reference.Scheduler):
    def schedule(self):
        batch = super().schedule()
        batch.preempted = []
        return batch


class LosesRequests(reference.Scheduler):
    def add(self, seq):
        pass


class AdmitsNobody(reference.Scheduler):
    def schedule(self):
        return ScheduledBatch()


class NeverGrows(reference.BlockManager):
    def append_slot(self, seq):
        pass


class OutOfRange(reference.BlockManager):
    def block_table(self, seq):
        return [block + self.num_blocks for block in self.tables[seq.seq_id]]


class RepeatsABlock(reference.BlockManager):
    def block_table(self, seq):
        table = self.tables[seq.seq_id]
        return table + table[:1]


class Reallocates(reference.BlockManager):
    def append_slot(self, seq):
        # Moves the sequence to fresh blocks each time it grows: its cached K/V stays behind.
        table = self.tables[seq.seq_id]
        if len(table) * self.block_size < seq.num_tokens:
            self.free_blocks.extend(table)
            self.tables[seq.seq_id] = [self.free_blocks.popleft() for _ in range(len(table) + 1)]


class StringTables(reference.BlockManager):
    def block_table(self, seq):
        return " ".join(map(str, self.tables[seq.seq_id]))


# Small enough that sequences preempt each other, so the preemption rules get exercised.
TIGHT = {"num_blocks": 10, "block_size": 4, "max_num_seqs": 4, "max_model_len": 40}


@pytest.mark.parametrize(
    ("options", "limits", "rule", "words"),
    [
        ({"scheduler_class": ReturnsATuple}, {}, "batch-type", "returned tuple"),
        ({"scheduler_class": ReturnsIds}, {}, "batch-type", "holds a int"),
        ({"scheduler_class": ForgetsToForget}, {}, "unknown-sequence", "finish(seq) should"),
        ({"scheduler_class": SchedulesAStranger}, {}, "unknown-sequence", "sequence 999"),
        ({"scheduler_class": SchedulesTwice}, {}, "duplicate", "in decode twice"),
        ({"scheduler_class": PrefillsAndDecodes}, {}, "duplicate", "in both prefill and decode"),
        ({"scheduler_class": PrefillsAgain}, {}, "prefill-state", "already in the cache"),
        ({"scheduler_class": DecodesNewcomers}, {}, "decode-state", "prefilled first"),
        ({}, {"max_num_seqs": 2}, "max-num-seqs", "max_num_seqs is 2"),
        ({}, {"max_num_batched_tokens": 10}, "max-num-batched-tokens", "is 10"),
        ({"block_manager_class": StringTables}, {}, "block-table", "not a list of int"),
        ({"block_manager_class": OutOfRange}, {}, "block-range", "blocks 0 to 63"),
        ({"block_manager_class": NeverGrows}, {}, "block-coverage", "but its block table has"),
        ({"block_manager_class": wrong.SharedBlockManager}, {}, "shared-block", "to sequences"),
        ({"block_manager_class": RepeatsABlock}, {}, "shared-block", "appears twice"),
        ({"block_manager_class": Reallocates}, {}, "moved-block", "table changed at index 0"),
        ({"scheduler_class": HidesItsPreemptions, **TIGHT}, {}, "block-table", "preempted"),
        ({"scheduler_class": LosesRequests}, {}, "lost-sequence", "has_unfinished() is False"),
        ({"scheduler_class": AdmitsNobody}, {}, "stalled", "every block is free"),
        ({"block_manager_class": wrong.LeakyBlockManager, **TIGHT}, {}, "stalled", "leak"),
        ({"scheduler_class": wrong.NoPreemptScheduler, **TIGHT}, {}, "stalled", "preempt one"),
    ],
)
def test_each_rule_catches_a_scheduler_that_breaks_it(options, limits, rule, words):
    engine = paged_engine(**options, checked_limits=limits)
    requests = prompts(12, seed=12, low=3, high=12)
    with pytest.raises(SchedulerError) as caught:
        engine.generate(requests, max_tokens=[25 - len(p) for p in requests])
    assert caught.value.rule == rule
    assert words in str(caught.value)
    assert f"[rule {rule}:" in str(caught.value)


def test_a_shared_block_is_caught_before_the_model_runs():
    engine = paged_engine(block_manager_class=wrong.SharedBlockManager)
    engine.add_request([1, 2, 3], max_tokens=4)
    engine.add_request([4, 5, 6], max_tokens=4)
    with pytest.raises(SchedulerError, match="gave block 0 to sequences 0 and 1"):
        engine.step()
    assert engine.runner.steps == []


def test_the_known_wrong_static_like_scheduler_is_correct_but_never_overlaps():
    engine = paged_engine(max_num_seqs=4, scheduler_class=wrong.StaticLikeScheduler)
    requests, limits = prompts(8, seed=13), [2, 20, 20, 20, 5, 5, 5, 5]
    outputs = engine.generate(requests, max_tokens=limits)
    assert outputs == [fake_expected(p, n) for p, n in zip(requests, limits, strict=True)]
    assert not any(stats.num_prefill and stats.num_decode for stats in engine.stats)


# --- the engine on its own thread ---


class Listener:
    """Collects each request's events, as the server's callbacks do, and says when all ended."""

    def __init__(self, expected: int) -> None:
        self.events: dict[int, list] = {}
        self.threads: set[str] = set()
        self.expected = expected
        self.done = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, seq_id_box: list[int]):
        def on_event(event) -> None:
            self.threads.add(threading.current_thread().name)
            with self.lock:
                self.events.setdefault(seq_id_box[0], []).append(event)
                ended = [
                    events
                    for events in self.events.values()
                    if isinstance(events[-1], EngineFailure) or events[-1].finished
                ]
                if len(ended) == self.expected:
                    self.done.set()

        return on_event


def submit(engine_thread: EngineThread, listener: Listener, prompt, max_tokens: int) -> int:
    # The callback may run before submit returns the id: hand it over through a box, filled
    # before the engine thread can see the request.
    box: list[int] = []
    with listener.lock:
        box.append(
            engine_thread.submit(
                prompt, max_tokens=max_tokens, ignore_eos=True, on_event=listener(box)
            )
        )
    return box[0]


@pytest.fixture
def running():
    threads: list[EngineThread] = []

    def start(engine: LLMEngine) -> EngineThread:
        engine_thread = EngineThread(engine)
        engine_thread.start()
        threads.append(engine_thread)
        return engine_thread

    yield start
    for engine_thread in threads:
        engine_thread.stop()


def test_the_engine_thread_delivers_each_requests_events_in_order(running):
    engine_thread = running(paged_engine(max_num_seqs=3))
    requests, limits = prompts(6, seed=14), lengths(6, seed=15, high=12)
    listener = Listener(expected=6)
    ids: list[int] = []

    def client() -> None:
        for prompt, limit in zip(requests, limits, strict=True):
            ids.append(submit(engine_thread, listener, prompt, limit))

    sender = threading.Thread(target=client)
    sender.start()
    sender.join()
    assert listener.done.wait(10)
    for seq_id, prompt, limit in zip(ids, requests, limits, strict=True):
        events = listener.events[seq_id]
        assert [event.token_id for event in events] == fake_expected(prompt, limit)
        assert [event.finished for event in events] == [False] * (limit - 1) + [True]
        assert events[-1].finish_reason == "length"
    assert listener.threads == {"llm-engine"}
    assert engine_thread.failure is None


def test_a_cancelled_request_gets_no_more_events_and_frees_its_blocks(running):
    engine = paged_engine()
    engine_thread = running(engine)
    events: list = []
    cancelled = threading.Event()

    def on_event(event) -> None:
        events.append(event)
        engine_thread.cancel(event.seq_id)  # before the next step
        cancelled.set()

    engine_thread.submit([1, 2, 3], max_tokens=50, ignore_eos=True, on_event=on_event)
    assert cancelled.wait(10)
    # A later request is served once the cancel went through: the engine is idle again.
    listener = Listener(expected=1)
    later = submit(engine_thread, listener, [7, 8], 3)
    assert listener.done.wait(10)
    assert [event.token_id for event in listener.events[later]] == fake_expected([7, 8], 3)
    assert len(events) == 1 and not events[0].finished
    assert not engine.has_unfinished()
    assert engine.scheduler.block_manager.num_free_blocks == 64


class FailsOnThirdStep(reference.Scheduler):
    calls = 0

    def schedule(self):
        self.calls += 1
        if self.calls == 3:
            raise IndexError("pop from an empty deque")
        return super().schedule()


def test_a_failing_scheduler_fails_every_pending_and_later_request(running):
    engine_thread = running(paged_engine(scheduler_class=FailsOnThirdStep))
    listener = Listener(expected=3)
    for prompt in prompts(3, seed=16):
        submit(engine_thread, listener, prompt, 20)
    assert listener.done.wait(10)
    failure = engine_thread.failure
    assert failure is not None and failure.message == "IndexError: pop from an empty deque"
    assert 'raise IndexError("pop from' in failure.traceback and failure.rule is None
    for events in listener.events.values():
        assert [type(e) for e in events] == [type(events[0])] * 2 + [EngineFailure]
        assert events[-1] is failure
    later = Listener(expected=1)
    submit(engine_thread, later, [1], 2)
    assert later.done.wait(10)
    assert list(later.events.values()) == [[failure]]


def test_a_scheduler_error_names_its_rule_in_the_failure(running):
    engine_thread = running(paged_engine(block_manager_class=wrong.SharedBlockManager))
    listener = Listener(expected=2)
    submit(engine_thread, listener, [1, 2], 5)
    submit(engine_thread, listener, [3, 4], 5)
    assert listener.done.wait(10)
    assert engine_thread.failure.rule == "shared-block"
    assert "gave block 0 to sequences" in engine_thread.failure.message


def test_a_listener_that_raises_loses_its_request_not_the_engine(running):
    engine = paged_engine()
    engine_thread = running(engine)

    def broken(event) -> None:
        raise RuntimeError("the client's queue is closed")

    engine_thread.submit([5, 5], max_tokens=30, ignore_eos=True, on_event=broken)
    listener = Listener(expected=1)
    seq_id = submit(engine_thread, listener, [6, 6], 4)
    assert listener.done.wait(10)
    assert [event.token_id for event in listener.events[seq_id]] == fake_expected([6, 6], 4)
    assert engine_thread.failure is None


def test_submit_rejects_a_bad_request_at_once_and_needs_a_running_thread():
    engine_thread = EngineThread(paged_engine())
    with pytest.raises(ValueError, match="the prompt is empty"):
        engine_thread.submit([], max_tokens=3, ignore_eos=True, on_event=print)
    with pytest.raises(RuntimeError, match="not running"):
        engine_thread.submit([1], max_tokens=3, ignore_eos=True, on_event=print)
    engine_thread.start()
    engine_thread.stop()
    with pytest.raises(RuntimeError, match="not running"):
        engine_thread.submit([1], max_tokens=3, ignore_eos=True, on_event=print)


# --- the real model ---


@pytest.fixture(scope="module")
def model():
    from runner.llm import load_model

    torch.manual_seed(0)
    return load_model()


def agrees(output: list[int], alone) -> bool:
    """Equal to the tokens the request gets alone, up to a first divergence at a near-tie
    (batched matmuls round differently); after one, the rest may differ."""
    for position, (token, expected) in enumerate(zip(output, alone.token_ids, strict=True)):
        if token != expected:
            return alone.margins[position] < 1e-3
    return True


@pytest.fixture(scope="module")
def alone(model):
    """Random prompts and the tokens each gets alone: the grader's reference."""
    from runner.serving.engine import greedy_alone

    rng = random.Random(17)
    requests = [[rng.randrange(4096) for _ in range(rng.randint(2, 24))] for _ in range(5)]
    limits = [rng.randint(4, 12) for _ in requests]
    expected = [
        greedy_alone(model, prompt, limit, eos_token_id=None)
        for prompt, limit in zip(requests, limits, strict=True)
    ]
    return requests, limits, expected


@pytest.mark.parametrize("kind", ["reference", "static"])
def test_the_real_model_gives_the_tokens_each_request_gets_alone(model, alone, kind):
    from runner.serving.engine import PagedLlama

    num_blocks, block_size = 10, 4
    runner = PagedLlama(model, num_blocks=num_blocks, block_size=block_size)
    if kind == "reference":
        scheduler = reference.Scheduler(
            reference.BlockManager(num_blocks, block_size),
            max_num_seqs=4,
            max_num_batched_tokens=64,
        )
    else:
        scheduler = StaticBatchScheduler(
            ReservingBlockManager(num_blocks, block_size),
            max_num_seqs=4,
            max_num_batched_tokens=64,
            reserve_tokens=16,
        )
    engine = LLMEngine(runner, scheduler, eos_token_id=None, max_model_len=40)
    requests, limits, expected = alone
    outputs = engine.generate(requests, max_tokens=limits)
    if kind == "reference":
        assert engine.num_preemptions > 0  # 10 blocks of 4 are too few for all at once
    else:
        assert max(stats.num_prefill for stats in engine.stats) >= 2
    for output, prompt, reference_output in zip(outputs, requests, expected, strict=True):
        assert agrees(output, reference_output), (prompt, output, reference_output.token_ids)
