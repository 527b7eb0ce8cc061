"""The `profiling` lab (Phase 1) at CPU scale: the model and its planted bottlenecks, the
scoring of answers and traces in process, and every notebook through the real pipeline
(sandbox, executor, the grader's own measurement in a clean child).

A notebook through the pipeline takes ~10-18 s on the 2-core CI machine (its worked examples,
then two sandboxed children importing torch); the memory and trace mistakes are graded from
their solution cells alone (~7 s each), which is the same grading without the notebook run.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
from typing import Any

import numpy as np
import pytest

from runner.graders import profiling
from runner.graders.base import GraderBroken
from runner.graders.profiling_adapter import plain_json, read_trace
from runner.graders.profiling_lab import CPU_SCALE, GPU_SCALE, Options, draw_config
from runner.graders.profiling_model import SITES, ModelConfig, build_model, make_inputs
from runner.graders.profiling_scoring import (
    Listed,
    Truth,
    _overlap,
    check_trace,
    read_answer,
    score,
)
from runner.graders.profiling_truth import measure, peak_in_range
from runner.labspec import load_lab_spec
from runner.pipeline import run_job
from runner.schema import check_report
from tests.runner.support import REPO, SEED, criterion, make_job, read_notebook, solution_grader

pytestmark = pytest.mark.timeout(300)

LAB = REPO / "notebooks" / "profiling"
FIXTURES = LAB / "fixtures"
# What the secret seed SEED plants at CPU scale (checked below): the grader's verdicts on the
# fixtures depend on it, e.g. the cheat that guesses an attention layer must guess wrong.
SEED_PLANTS = ("blocks.1.mlp.down", "shape")


@pytest.fixture(scope="module")
def profiling_spec():
    return load_lab_spec(LAB)


@pytest.fixture(scope="module")
def graded(policy, tmp_path_factory):
    """graded("reference.ipynb" or a fixture name) -> report, computed once per module."""
    cache: dict[str, dict[str, Any]] = {}
    workroot = tmp_path_factory.mktemp("profiling-jobs")

    def grade(name: str) -> dict[str, Any]:
        if name not in cache:
            path = LAB / name if (LAB / name).exists() else FIXTURES / name
            job = make_job(
                read_notebook(path),
                lab="profiling",
                limits={"cell_timeout_s": 120, "total_timeout_s": 300, "max_output_bytes": 200_000},
            )
            cache[name] = run_job(job, workroot=workroot, policy=policy)
        return cache[name]

    return grade


@pytest.fixture(scope="module")
def graded_solution(policy, profiling_spec, tmp_path_factory):
    """graded_solution(fixture name) -> GradeResult of its solution cells alone."""
    grade = solution_grader(profiling, profiling_spec, policy, tmp_path_factory)
    return lambda name: grade(FIXTURES / name)


def failed_criteria(report: dict[str, Any]) -> list[str]:
    return [c["name"] for c in report["criteria"] if c["evaluated"] and not c["passed"]]


def tiny(cause: str, site: str, **changes: Any) -> ModelConfig:
    fields = dict(
        layers=2, d_model=64, heads=4, ffn=256, vocab=128, batch=2, seq=32, cache_len=48,
        dtype="float32", slow_block=1, slow_site=site, cause=cause, chunk_rows=4, input_seed=1,
    )  # fmt: skip
    return ModelConfig(**{**fields, **changes})


# -- the lab's definition, in process ----------------------------------------------------


def test_the_lab_is_defined_under_the_phase_1_milestone(profiling_spec):
    assert profiling_spec.milestone == "foundations"
    assert profiling_spec.device_classes == ("cpu", "gpu")
    assert profiling_spec.solution == "profile_model"
    thresholds = {c.name: dict(c.thresholds) for c in profiling_spec.criteria}
    assert thresholds == {
        "slowest_module": {"cpu": 1, "gpu": 1},
        "top_k": {"cpu": 1, "gpu": 1},
        "shares": {"cpu": 0.1, "gpu": 0.1},
        "cause": {"cpu": 1, "gpu": 1},
        "parameter_bytes": {"cpu": 0, "gpu": 0},
        "kv_cache_bytes": {"cpu": 0, "gpu": 0},
        "activation_bytes": {"cpu": 10, "gpu": 10},
        "trace": {"cpu": 1, "gpu": 1},
        "allocator_reserve": {"gpu": 25},
        "workspace": {"gpu": 25},
    }
    options = Options.from_spec(profiling_spec, "cpu")
    assert (options.k, options.threads, options.trace_max_bytes) == (3, 1, 20_000_000)


def test_seeds_plant_every_cause_and_site_a_scale_offers_and_only_those():
    for device_class, scale in (("cpu", CPU_SCALE), ("gpu", GPU_SCALE)):
        planted = set()
        for i in range(300):
            rng = np.random.default_rng(np.random.SeedSequence(i))
            config = draw_config(rng, device_class)
            assert config.slow_block < config.layers
            planted.add((config.cause, config.slow_site))
        offered = {(cause, site) for cause in scale.causes for site in scale.sites[cause]}
        assert planted == offered
    assert {cause for cause, _ in offered} == {"unfused", "shape", "host_sync"}
    assert "host_sync" not in CPU_SCALE.causes  # nothing to wait for without a device


def test_the_test_seed_plants_what_the_fixtures_expect():
    config = draw_config(np.random.default_rng(np.random.SeedSequence(int(SEED, 16))), "cpu")
    assert (config.slow_module, config.cause) == SEED_PLANTS


def test_the_gpu_tests_seeds_plant_one_cause_each_at_gpu_scale():
    from tests.runner.test_gpu_profiling import SEEDS

    for cause, seed in SEEDS.items():
        config = draw_config(np.random.default_rng(np.random.SeedSequence(int(seed, 16))), "gpu")
        assert config.cause == cause, (seed, config)


@pytest.mark.parametrize(("cause", "site"), [(c, s) for c, sites in SITES.items() for s in sites])
def test_a_planted_bottleneck_computes_the_same_function_as_the_fast_layer(cause, site):
    import torch

    config = tiny(cause, site)
    fast = tiny("shape", "mlp.up", chunk_rows=1 << 20)  # one chunk: the fast path, whole
    ids = make_inputs(config, device="cpu")
    with torch.no_grad():
        slow_out = build_model(config, device="cpu")(ids)
        fast_out = build_model(fast, device="cpu")(ids)
    torch.testing.assert_close(slow_out, fast_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("cause", "site"), [(c, s) for c, sites in SITES.items() for s in sites])
def test_the_slow_layer_looks_like_its_siblings(cause, site):
    model = build_model(tiny(cause, site), device="cpu")
    slow = model.get_submodule(f"blocks.1.{site}")
    sibling = model.get_submodule(f"blocks.0.{site}")
    assert type(slow) is type(sibling)
    assert sorted(vars(slow)) == sorted(vars(sibling))
    assert slow.chunk_rows == sibling.chunk_rows
    assert slow.compute.__name__ == sibling.compute.__name__
    assert slow.compute.__qualname__ == sibling.compute.__qualname__
    for _, module in model.named_modules():
        names = " ".join(vars(module)).lower()
        assert not any(clue in names for clue in ("seed", "config", "slow", "cause", "planted"))


def test_the_config_counts_tied_parameters_once_and_the_whole_cache():
    config = tiny("shape", "mlp.up")
    model = build_model(config, device="cpu")
    assert config.parameter_bytes() == sum(p.numel() * 4 for p in model.parameters())
    listed_twice = sum(t.numel() * 4 for t in model.state_dict().values())
    assert listed_twice > config.parameter_bytes() + config.kv_cache_bytes()  # tied weight
    assert config.kv_cache_bytes() == 2 * 2 * 2 * 48 * 64 * 4


def test_the_grader_measures_the_planted_layer_on_top_and_counts_memory_exactly():
    import torch

    config = tiny("shape", "mlp.up", chunk_rows=1)
    model = build_model(config, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the grader's children run
    try:
        truth = measure(model, make_inputs(config, device="cpu"), device="cpu", reps=9, warmup=1)
    finally:
        torch.set_num_threads(threads)
    shares = {name: leaf["share"] for name, leaf in truth["leaves"].items()}
    assert set(shares) == {n for n, m in model.named_modules() if n and not any(m.children())}
    assert max(shares, key=shares.get) == "blocks.1.mlp.up"
    assert all(
        0 < leaf["low"] <= leaf["share"] <= leaf["high"] < 1 for leaf in truth["leaves"].values()
    )
    assert truth["memory"]["parameters"] == config.parameter_bytes()
    assert truth["memory"]["kv_cache"] == config.kv_cache_bytes()
    logits = config.batch * config.seq * config.vocab * 4
    assert logits <= truth["memory"]["activations"] < 20 * logits
    assert truth["memory"]["allocator_reserve"] is None and truth["memory"]["workspace"] is None


def test_the_activation_peak_is_the_highest_running_total_inside_the_range():
    events = [
        {"name": "[memory]", "ph": "i", "ts": 5, "args": {"Bytes": 999}},  # before the range
        {"name": "forward", "ph": "X", "ts": 10, "dur": 100},
        {"name": "[memory]", "ph": "i", "ts": 20, "args": {"Bytes": 400}},
        {"name": "[memory]", "ph": "i", "ts": 30, "args": {"Bytes": 300}},
        {"name": "[memory]", "ph": "i", "ts": 40, "args": {"Bytes": -400}},
        {"name": "[memory]", "ph": "i", "ts": 50, "args": {"Bytes": 200}},
        {"name": "[memory]", "ph": "i", "ts": 200, "args": {"Bytes": 5000}},  # after it
    ]
    assert peak_in_range(events, "forward") == 700


# -- reading and scoring answers, in process ---------------------------------------------

TRUTH = Truth(
    shares={"a": 0.40, "b": 0.10, "c": 0.05, "d": 0.04, "e": 0.01},
    slowest="a",
    cause="unfused",
    memory={"parameters": 100, "kv_cache": 50, "activations": 4 << 20},
    forward_ms=10.0,
)


def listed(*names: str) -> list[Listed]:
    return [Listed(module=n, share=TRUTH.shares.get(n, 0.0), cause=None) for n in names]


def test_ties_within_the_tolerance_count_and_a_clear_miss_does_not():
    assert _overlap(listed("a", "b", "c"), TRUTH, 0.03) == (3, [])
    assert _overlap(listed("a", "b", "d"), TRUTH, 0.03)[0] == 3  # d trails c by 0.01: a tie
    matched, beaten = _overlap(listed("a", "c", "d"), TRUTH, 0.03)  # b (0.10) left out
    assert matched == 1 and beaten == ["b (0.10)"]
    assert _overlap(listed("a", "a", "nope"), TRUTH, 0.03)[0] == 1  # repeats and unknowns


def test_a_score_says_what_was_answered_and_what_was_measured():
    answer = read_answer(
        {
            "slowest": [
                {"module": "b", "share": 0.3, "cause": "shape"},
                {"module": "a", "share": 0.4, "cause": None},
                {"module": "c", "share": 0.05, "cause": None},
            ],
            "memory": {"parameters": 100, "kv_cache": 0, "activations": (4 << 20) + (1 << 18)},
        },
        k=3,
    )
    assert answer.problems == []
    measured, said = score(answer, TRUTH, k=3, tolerance=0.03)
    assert measured["slowest_module_correct"] == 0 and measured["cause_correct"] == 0
    assert measured["share_error"] == pytest.approx(0.2)
    assert (measured["parameter_bytes_error"], measured["kv_cache_bytes_error"]) == (0, 50)
    assert measured["activation_bytes_error"] == pytest.approx(6.25)  # percent
    assert measured["allocator_reserve_error"] is None  # not measured on this device
    assert said["slowest_module_correct"] == (
        "You named b first; the grader measured a at 0.40 of the forward (b: 0.10)."
    )
    assert "you said 0.300, the grader measured 0.100" in said["share_error"]
    assert said["kv_cache_bytes_error"] == (
        "You said 0 bytes for kv_cache; the grader measured 50 bytes."
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ([1, 2], "the answer is a list, not a dict"),
        ({"slowest": "a", "memory": {}}, '"slowest" is a str, not a list of 3 modules'),
        ({"slowest": [{"module": "a"}] * 2, "memory": {}}, '"slowest" lists 2 modules'),
        ({"slowest": [{"module": "a", "share": 2}], "memory": {}}, "not a fraction 0-1"),
        ({"slowest": [{"module": "a", "cause": "slow"}], "memory": {}}, "has cause 'slow'"),
        ({"slowest": [{"name": "a"}], "memory": {}}, 'is not a dict with a "module" name'),
        ({"slowest": [], "memory": {"kv_cache": "big"}}, 'memory["kv_cache"] is a str'),
    ],
)
def test_a_malformed_answer_names_its_defect(raw, problem):
    answer = read_answer(raw, k=3)
    assert any(problem in p for p in answer.problems), answer.problems


def test_answers_become_plain_json_and_what_is_not_json_is_refused():
    import torch

    answer = {"share": torch.tensor(0.25), "bytes": np.int64(7), "rows": (1, 2.5, None)}
    assert plain_json(answer) == {"share": 0.25, "bytes": 7, "rows": [1, 2.5, None]}
    for bad, why in ((float("nan"), "nan"), (object(), "object"), (torch.ones(2), "Tensor")):
        with pytest.raises(ValueError, match=why):
            plain_json({"x": bad})


def trace_bytes(events: list[dict[str, Any]]) -> bytes:
    return gzip.compress(json.dumps({"traceEvents": events}).encode())


def operator(name: str, pid: int = 7) -> dict[str, Any]:
    return {"name": name, "ph": "X", "pid": pid, "ts": 1, "dur": 1}


def check(data: bytes | None, info: dict[str, Any] | None = None, *, min_operators: int = 3):
    info = {"written": True, "problem": None, "pid": 7} if info is None else info
    return check_trace(
        info,
        data,
        max_bytes=1000,
        min_operators=min_operators,
        name="trace.json.gz",
        content_type="application/gzip",
    )


def test_a_trace_of_this_model_taken_in_the_call_is_valid_and_offered_for_download():
    data = trace_bytes(
        [operator("aten::embedding"), operator("aten::linear"), operator("aten::add")]
    )
    result = check(data)
    assert result.valid and result.events == 3
    assert base64.b64decode(result.artifact["data_base64"]) == data


@pytest.mark.parametrize(
    ("data", "info", "why"),
    [
        (None, {"written": False}, "No trace file was written"),
        (None, {"written": True, "problem": "the trace is 25 MB"}, "the trace is 25 MB"),
        (b"not gzip", None, "not a Chrome trace"),
        (gzip.compress(b"[1, 2]"), None, 'not a JSON object with a "traceEvents" list'),
        (gzip.compress(b" " * 2000), None, "over 0.001 MB"),  # a gzip bomb stops at the cap
        (trace_bytes([operator("aten::embedding"), operator("aten::linear")]), None, "at least 3"),
        (
            trace_bytes([operator(n, pid=1) for n in ("aten::embedding", "aten::mm", "aten::add")]),
            None,
            "0 of them operators recorded in the graded call",
        ),
        (
            trace_bytes([operator(n) for n in ("aten::mm", "aten::add", "aten::mul")]),
            None,
            "no aten::embedding",
        ),
    ],
)
def test_a_trace_that_is_not_this_models_profile_is_invalid_and_not_kept(data, info, why):
    result = check(data, info)
    assert not result.valid and result.artifact is None
    assert why in result.message, result.message


def test_the_adapter_refuses_a_trace_over_the_cap_before_reading_it(tmp_path):
    path = tmp_path / "trace.json"
    path.write_bytes(b"x" * 2001)
    info, data = read_trace(str(path), max_bytes=2000)
    assert data is None and "over the 0.002 MB cap" in info["problem"]
    info, data = read_trace(str(tmp_path / "missing.json"), max_bytes=2000)
    assert data is None and not info["written"]


class FlatChild:
    """A stand-in for the truth child whose measurement shows no clear bottleneck."""

    def __init__(self, config: ModelConfig, *, parameters: int | None = None) -> None:
        self.config, self.calls = config, 0
        self.parameters = config.parameter_bytes() if parameters is None else parameters

    def call_json(self, request, *, timeout_s, doing):
        self.calls += 1
        leaves = {f"blocks.{i}.{s}": {"share": 0.1, "low": 0.1, "high": 0.1} for i in range(2)
                  for s in ("attn.qkv", "mlp.up", "mlp.down", "attn.core")}  # fmt: skip
        memory = {"parameters": self.parameters, "kv_cache": self.config.kv_cache_bytes()}
        answer = {"leaves": leaves, "memory": memory, "forward_ms": 1.0}
        return type("Call", (), {"answer": answer})()


def test_a_node_too_busy_to_show_the_planted_layer_gets_no_verdict(profiling_spec):
    config = tiny("shape", "mlp.up")
    run = profiling._Run(
        spec=profiling_spec,
        device_class="cpu",
        options=Options.from_spec(profiling_spec, "cpu"),
        config=config,
    )
    child = FlatChild(config)
    with pytest.raises(GraderBroken, match="too busy to measure the model"):
        run.measure_truth(child)
    assert child.calls == 2  # measured again, longer, before giving up
    with pytest.raises(GraderBroken, match="parameters bytes"):
        run.measure_truth(FlatChild(config, parameters=1))


# -- every notebook through the pipeline, on a CPU worker --------------------------------


def test_the_reference_passes_on_cpu_and_its_trace_is_offered_for_download(graded):
    report = graded("reference.ipynb")
    check_report(report)
    assert report["status"] == "passed", report["message"]
    assert report["message"] == (
        "All 8 criteria passed. Not evaluated on cpu: allocator_reserve, workspace "
        "(GPU nodes only)."
    )
    for name in ("allocator_reserve", "workspace"):
        row = criterion(report, name)
        assert row["evaluated"] is False and row["measured"] is None
        assert row["explanation"].startswith("Not evaluated on cpu workers")
    metrics = report["metrics"]
    assert metrics["truth"]["slowest"] == SEED_PLANTS[0]
    assert metrics["truth"]["cause"] == SEED_PLANTS[1]
    assert metrics["truth_measurement"]["margin"] >= 1.5
    assert metrics["evaluated_where"]["workspace"] == ["gpu"]
    assert metrics["evaluated_where"]["trace"] == ["cpu", "gpu"]
    assert criterion(report, "shares")["measured"] <= 0.1
    assert (
        "the grader measured blocks.1.mlp.down"
        in criterion(report, "slowest_module")["explanation"]
    )
    [artifact] = report["artifacts"]
    assert (artifact["name"], artifact["content_type"]) == ("trace.json.gz", "application/gzip")
    trace = json.loads(gzip.decompress(base64.b64decode(artifact["data_base64"])))
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"aten::embedding", SEED_PLANTS[0], "forward"} <= names
    json.dumps(report, allow_nan=False)


def test_the_untouched_starter_errors_with_the_helpful_message(graded):
    report = graded("profiling.ipynb")
    assert report["status"] == "error"
    assert report["message"].startswith(
        "Cell 18 raised NotImplementedError: Implement profile_model: time each leaf module, "
        "export a torch.profiler trace to trace_path"
    )


def test_ranking_layers_by_parameter_count_fails_the_slowest_module_and_the_top_k(graded):
    report = graded("fixtures/by_parameters.ipynb")
    assert report["status"] == "failed"
    assert failed_criteria(report) == ["slowest_module", "top_k"]
    explanation = criterion(report, "slowest_module")["explanation"]
    assert "You named blocks.0.mlp.up first; the grader measured blocks.1.mlp.down" in explanation
    assert (
        "Left out by you and ahead by more than 0.03: blocks.1.mlp.down"
        in criterion(report, "top_k")["explanation"]
    )


@pytest.mark.parametrize(
    ("fixture", "failed"),
    [
        ("no_kv_cache.ipynb", "kv_cache_bytes"),
        ("state_dict_parameters.ipynb", "parameter_bytes"),
        ("summed_outputs.ipynb", "activation_bytes"),
        ("no_trace.ipynb", "trace"),
    ],
)
def test_each_memory_or_trace_mistake_fails_exactly_its_own_criterion(
    graded_solution, fixture, failed
):
    result = graded_solution(fixture)
    assert result.status == "failed", result.message
    assert [c.name for c in result.criteria if c.evaluated and not c.passed] == [failed]
    row = next(c for c in result.criteria if c.name == failed)
    assert "the grader measured" in row.explanation or "trace" in row.explanation
    if failed == "trace":
        assert result.artifacts == []
        assert "No trace file was written at trace_path." in row.explanation


def test_a_hardcoded_answer_from_another_seed_is_caught(graded):
    report = graded("fixtures/hardcoded.ipynb")
    assert report["status"] == "failed"
    failed = failed_criteria(report)
    assert {"slowest_module", "parameter_bytes", "kv_cache_bytes", "trace"} <= set(failed)
    assert "artifacts" in report and report["artifacts"] == []  # a hand-written trace: not kept


def test_looking_for_the_answer_instead_of_measuring_finds_nothing_and_fails(graded):
    report = graded("fixtures/reads_model.ipynb")
    assert report["status"] == "failed"
    assert {"slowest_module", "activation_bytes"} <= set(failed_criteria(report))
    clues = next(line for line in report["log_tail"].splitlines() if "clues found:" in line)
    for secret in ("slow_site", "mlp.down", "'shape'", "cause", SEED):
        assert secret not in clues, clues


def test_the_lab_folder_holds_what_the_build_script_writes(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", LAB / "build_notebooks.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.setattr(build, "HERE", tmp_path)
    monkeypatch.setattr(build, "FIXTURES", tmp_path / "fixtures")
    build.main()
    for path in sorted(tmp_path.rglob("*.ipynb")):
        committed = LAB / path.relative_to(tmp_path)
        assert path.read_text() == committed.read_text(), f"{committed} is stale: rebuild it"
    shutil.rmtree(tmp_path)
