"""The cost and capacity model (runner/cost/): the roofline formulas on numbers worked by hand,
the model shapes and hardware catalogue as data (loading, validation, sources, the measured
entries), a worker's own measured peaks as a catalogue entry, fleet plans (every named error,
the autoscaled day), the grader's planner, and the dashboard's arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import MappingProxyType

import numpy as np
import pytest

from runner.cost.catalogue import (
    Catalogue,
    CatalogueError,
    Gpu,
    load_catalogue,
    node_entry,
)
from runner.cost.dashboard import (
    REPORT_FIELDS,
    alert_threshold,
    compare_reports,
    cost_report,
    synthetic_log,
)
from runner.cost.fleet import PlanError, daily_cost, parse_plan, replicas_by_hour
from runner.cost.optimise import best_plan, sized_candidates
from runner.cost.roofline import Deployment, DoesNotFit
from runner.cost.shapes import ModelShape, ModelShapeError, load_models
from runner.cost.traffic import Workload, WorkloadError, diurnal_curve
from runner.measure.peaks import Peaks


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="module")
def models() -> dict[str, ModelShape]:
    return load_models()


def workload_for(models, **changes) -> Workload:
    plain = {
        "name": "test",
        "model": models["llama-3.1-8b"].to_plain(),
        "peak_rps": 10_000,
        "daily_curve": list(diurnal_curve(trough=0.25, peak_hour=15)),
        "prompt_tokens": {"distribution": "lognormal", "mean": 600, "sigma": 0.6, "max": 4096},
        "output_tokens": {"distribution": "lognormal", "mean": 180, "sigma": 0.6, "max": 1024},
        "slo": {"ttft_p99_s": 1.0, "tpot_p99_s": 0.06},
        "burst": {"multiplier": 1.8, "duration_s": 4.0, "ttft_p99_s": 1.5},
        "precisions": ["bf16", "fp8"],
        "routing": ["round_robin", "least_loaded"],
    }
    plain.update(changes)
    return Workload.from_plain(plain)


def a_plan(**changes):
    plan = {
        "gpu": "H100-SXM-80GB",
        "gpus_per_replica": 1,
        "precision": "fp8",
        "max_batch": 512,
        "routing": "least_loaded",
        "replicas": 160,
        "autoscaling": {"min_replicas": 4, "target_rps_per_replica": 60.0},
    }
    plan.update(changes)
    return plan


# -- model shapes ------------------------------------------------------------------------------


def test_the_published_parameter_counts_match_the_shapes(models):
    for model in models.values():
        assert model.params_from_shapes() == pytest.approx(model.params, rel=0.001), model.name
    assert set(models) == {"llama-3.1-8b", "llama-3.1-70b", "llama-2-7b"}
    assert all("huggingface.co" in m.source for m in models.values())


def test_kv_bytes_per_token_are_2_x_layers_x_kv_heads_x_head_dim_x_bytes(models):
    # Llama-3.1-8B: 2 x 32 x 8 x 128 x 2 = 131,072 bytes in bf16; Llama-2-7B has no GQA (32 KV
    # heads): 4x that. 70B: 2 x 80 x 8 x 128 x 2 = 327,680.
    assert models["llama-3.1-8b"].kv_bytes_per_token(2) == 131_072
    assert models["llama-2-7b"].kv_bytes_per_token(2) == 4 * 131_072
    assert models["llama-3.1-70b"].kv_bytes_per_token(2) == 327_680
    assert models["llama-3.1-8b"].kv_bytes_per_token(1) == 65_536
    assert models["llama-3.1-8b"].weight_bytes(2) == pytest.approx(16.06e9)


def test_a_model_with_a_missing_or_silly_field_is_refused_by_name(models):
    plain = models["llama-3.1-8b"].to_plain()
    with pytest.raises(ModelShapeError, match="kv_heads must be a positive integer"):
        ModelShape.from_plain({**plain, "kv_heads": 0})
    with pytest.raises(ModelShapeError, match="heads must be a multiple of kv_heads"):
        ModelShape.from_plain({**plain, "kv_heads": 7})
    with pytest.raises(ModelShapeError, match="params must be positive"):
        ModelShape.from_plain({**plain, "params": -1.0})


# -- the roofline -------------------------------------------------------------------------------


def test_decode_time_is_bytes_over_bandwidth_and_prefill_flops_over_flops(models, catalogue):
    h100 = Deployment(
        models["llama-3.1-8b"], catalogue.gpu("H100-SXM-80GB"), "bf16", 1, catalogue.assumptions
    )
    bandwidth = 3.35e12 * 0.8  # the datasheet figure x the memory efficiency
    assert h100.bandwidth == pytest.approx(bandwidth)
    # Batch 1, context 1000: 16.06e9 + 1000 x 131072 bytes over 2.68e12 B/s, + 2 ms.
    expected = 0.002 + (16.06e9 + 1000 * 131_072) / bandwidth
    assert h100.decode_step_time(batch=1, context=1000) == pytest.approx(expected)
    assert expected == pytest.approx(0.00804, abs=1e-5)
    # Prefill of 1000 tokens: 2 x 8.03e9 x 1000 FLOPs over 989.4e12 x 0.5, + 2 ms = 34.5 ms.
    assert h100.prefill_time(1000) == pytest.approx(0.002 + 2 * 8.03e9 * 1000 / (989.4e12 * 0.5))
    assert h100.prefill_time(1000) == pytest.approx(0.0345, abs=1e-4)


def test_the_compute_bound_batch_is_the_ridge_point_at_no_context(models, catalogue):
    h100 = Deployment(
        models["llama-3.1-8b"], catalogue.gpu("H100-SXM-80GB"), "bf16", 1, catalogue.assumptions
    )
    # weights / bandwidth = batch x 2 x params / flops  ->  batch = 2 bytes x flops / (2 x bw)
    ridge = 2 * (989.4e12 * 0.5) / (2 * 3.35e12 * 0.8)
    assert h100.compute_bound_batch(context=0) == pytest.approx(ridge)
    assert ridge == pytest.approx(184.6, abs=0.1)
    assert h100.compute_bound_batch(context=512) > ridge
    assert h100.compute_bound_batch(context=8192) == math.inf  # KV reads outgrow the FLOPs


def test_memory_left_for_the_kv_cache_and_models_that_do_not_fit(models, catalogue):
    h100 = Deployment(
        models["llama-3.1-8b"], catalogue.gpu("H100-SXM-80GB"), "bf16", 1, catalogue.assumptions
    )
    # 80 GB x 0.9 - 16.06 GB = 55.94 GB = 426,788 tokens of 131,072 bytes.
    assert h100.kv_budget_tokens == math.floor((72e9 - 16.06e9) / 131_072) == 426_788
    big = Deployment(
        models["llama-3.1-70b"], catalogue.gpu("H100-SXM-80GB"), "bf16", 1, catalogue.assumptions
    )
    with pytest.raises(DoesNotFit, match=r"141.1 GB of weights; 1 x H100-SXM-80GB holds 72.0 GB"):
        big.check_fits(tokens_per_request=5000)
    replace(big, gpus_per_replica=2).check_fits(tokens_per_request=5000)
    l4 = Deployment(
        models["llama-3.1-8b"], catalogue.gpu("L4-24GB"), "bf16", 1, catalogue.assumptions
    )
    l4.check_fits(tokens_per_request=5120)  # 21.6 - 16.06 GB leaves 42K tokens: fits
    with pytest.raises(DoesNotFit, match=r"room for 42266 tokens of KV cache .* fewer than one"):
        l4.check_fits(tokens_per_request=50_000)


def test_steady_state_is_littles_law_and_capacity_respects_a_step_limit(models, catalogue):
    d = Deployment(
        models["llama-3.1-8b"], catalogue.gpu("H100-SXM-80GB"), "fp8", 1, catalogue.assumptions
    )
    rate, step = d.steady_state(batch=200, mean_prompt=600, mean_output=180)
    assert rate == pytest.approx(200 / (180 * step))
    assert step == pytest.approx(
        d.step_time(sequences=200, context_tokens=200 * 690, prefill_tokens=200 * 600 / 180)
    )
    limited, batch, _ = d.capacity(
        max_batch=1024, mean_prompt=600, mean_output=180, step_time_limit=0.04
    )
    assert d.slowest_step(batch=batch, mean_prompt=600, mean_output=180) <= 0.04 + 1e-9
    unlimited, most, _ = d.capacity(max_batch=1024, mean_prompt=600, mean_output=180)
    assert most == pytest.approx(2048 * 180 / 600)  # the prefill budget bounds the batch
    assert 0 < limited < unlimited
    assert d.batch_for_rate(limited, max_batch=1024, mean_prompt=600, mean_output=180) == (
        pytest.approx(batch, rel=1e-6)
    )


# -- the catalogue ------------------------------------------------------------------------------


def test_every_catalogue_entry_has_its_figures_and_their_sources(catalogue):
    assert {"H100-SXM-80GB", "H200-SXM-141GB", "A100-SXM-80GB", "L40S-48GB", "L4-24GB"} <= set(
        catalogue.gpus
    )
    for gpu in catalogue.gpus.values():
        assert gpu.source.strip() and gpu.price_source.startswith("assumption"), gpu.name
        if gpu.basis == "datasheet":
            assert "https://www.nvidia.com/en-us/data-center/" in gpu.source
    for name in (
        "memory_efficiency",
        "compute_efficiency",
        "step_overhead_s",
        "memory_utilisation",
        "tensor_parallel_efficiency",
        "max_prefill_tokens",
    ):
        assert catalogue.assumptions.sources[name].strip(), name


def test_the_measured_entries_hold_this_projects_recorded_h100_and_h200_figures(catalogue):
    h100 = catalogue.gpu("H100-80GB-measured")
    assert h100.basis == "measured"
    assert h100.bandwidth_bytes_per_s == 3.006e12  # docs/benchmarks/measurement.md
    assert dict(h100.flops_per_s) == {"bf16": 783e12}  # 783-803 TFLOP/s, the low end
    assert "2026-11-27" in h100.source and "580.159.04" in h100.source
    assert "docs/benchmarks/measurement.md" in h100.source
    h200 = catalogue.gpu("H200-141GB-measured")
    assert h200.bandwidth_bytes_per_s == 4.23e12 and dict(h200.flops_per_s) == {"bf16": 801e12}
    # The dense datasheet figures: half of NVIDIA's "with sparsity" ones.
    assert catalogue.gpu("H100-SXM-80GB").flops_per_s["bf16"] == pytest.approx(
        1979e12 / 2, rel=1e-3
    )


def test_a_catalogue_travels_as_plain_data_and_comes_back_the_same(catalogue):
    again = Catalogue.from_plain(catalogue.to_plain())
    assert again.to_plain() == catalogue.to_plain()
    assert catalogue.to_plain()["precision_bytes"] == {"bf16": 2, "fp8": 1}


def test_a_broken_catalogue_is_refused_with_the_entry_and_field(catalogue, tmp_path):
    plain = catalogue.to_plain()
    bad = {**plain, "gpus": {**plain["gpus"]}}
    bad["gpus"]["H100-SXM-80GB"] = {**plain["gpus"]["H100-SXM-80GB"], "price_per_hour": -1}
    with pytest.raises(CatalogueError, match="GPU H100-SXM-80GB: price_per_hour must be positive"):
        Catalogue.from_plain(bad)
    bad["gpus"]["H100-SXM-80GB"] = {**plain["gpus"]["H100-SXM-80GB"], "flops_per_s": {"int4": 1.0}}
    with pytest.raises(CatalogueError, match="flops_per_s.int4 is not a precision"):
        Catalogue.from_plain(bad)
    bad["gpus"]["H100-SXM-80GB"] = {**plain["gpus"]["H100-SXM-80GB"], "source": ""}
    with pytest.raises(CatalogueError, match="every entry needs a source"):
        Catalogue.from_plain(bad)
    no_assumptions = {key: value for key, value in plain.items() if key != "assumptions"}
    with pytest.raises(CatalogueError, match="assumptions"):
        Catalogue.from_plain(no_assumptions)
    broken = tmp_path / "catalogue.toml"
    broken.write_text("[[gpu]\n")
    with pytest.raises(CatalogueError, match="cannot be read"):
        load_catalogue(broken)
    with pytest.raises(CatalogueError, match="unknown GPU 'B200'; the catalogue has: A100"):
        catalogue.gpu("B200")


def test_a_workers_measured_peaks_become_a_this_node_entry(catalogue):
    peaks = Peaks(
        memory_bytes_per_s=3.0e12,
        flops_per_s={"bf16": 790e12, "fp32": 51e12},
        device={"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "driver": "580", "torch": "2"},
        measured_at="2026-11-27T00:00:00Z",
        method="a test's peaks.",
    )
    entry = node_entry(peaks, catalogue)
    assert entry is not None and entry.name == "this-node" and entry.basis == "measured"
    assert entry.bandwidth_bytes_per_s == 3.0e12 and dict(entry.flops_per_s) == {"bf16": 790e12}
    assert entry.price_per_hour == catalogue.gpu("H100-SXM-80GB").price_per_hour
    assert "this-node" in catalogue.with_gpu(entry).gpus
    unknown_card = replace(peaks, device={"kind": "cuda", "name": "NVIDIA B200"})
    assert node_entry(unknown_card, catalogue) is None
    assert node_entry(replace(peaks, device={"kind": "cpu"}), catalogue) is None


# -- fleet plans ---------------------------------------------------------------------------------


def test_a_good_plan_parses(models, catalogue):
    plan = parse_plan(a_plan(), workload=workload_for(models), catalogue=catalogue)
    assert plan.replicas == 160 and plan.target_rps_per_replica == 60.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gpu": "B200-192GB"}, "unknown GPU 'B200-192GB'; the catalogue has: A100-SXM-80GB"),
        ({"replicas": -3}, "replicas must be at least 1, got -3"),
        ({"replicas": 2.5}, "replicas must be a whole number, got 2.5"),
        ({"replicas": True}, "replicas must be a whole number"),
        ({"precision": "int4"}, "precision 'int4' is not one this workload accepts"),
        ({"gpu": "A100-SXM-80GB"}, "A100-SXM-80GB has no fp8 figure in the catalogue"),
        ({"gpu": "L40S-48GB", "gpus_per_replica": 2}, "L40S-48GB allows at most 1 per replica"),
        ({"routing": "random"}, "routing 'random' is not one of round_robin, least_loaded"),
        ({"max_batch": 0}, "max_batch must be at least 1"),
        ({"price_per_hour": 0.01}, "unknown field(s) in the plan: price_per_hour. A plan names"),
        ({"gpu_spec": {}}, "its memory, speed and price are the grader's"),
        ({"autoscaling": {"min_replicas": 1}}, "missing target_rps_per_replica"),
        (
            {"autoscaling": {"min_replicas": 1, "target_rps_per_replica": 100.0}},
            "above the load per replica at peak (10000 / 160 = 62.5)",
        ),
        (
            {"autoscaling": {"min_replicas": 200, "target_rps_per_replica": 50.0}},
            "autoscaling.min_replicas must be at most 160, got 200",
        ),
    ],
)
def test_a_bad_plan_is_refused_with_a_named_error(models, catalogue, change, message):
    with pytest.raises(PlanError) as refused:
        parse_plan(a_plan(**change), workload=workload_for(models), catalogue=catalogue)
    assert message in str(refused.value)


def test_missing_fields_and_non_dicts_are_named(models, catalogue):
    workload = workload_for(models)
    plan = a_plan()
    del plan["precision"], plan["routing"]
    with pytest.raises(PlanError, match="the plan lacks the field\\(s\\) precision, routing"):
        parse_plan(plan, workload=workload, catalogue=catalogue)
    with pytest.raises(PlanError, match="a plan must be a dict"):
        parse_plan([1, 2], workload=workload, catalogue=catalogue)


def test_a_plan_whose_model_does_not_fit_says_by_how_much(models, catalogue):
    workload = workload_for(models, model=models["llama-3.1-70b"].to_plain())
    with pytest.raises(
        PlanError, match="the model does not fit: llama-3.1-70b in bf16 is 141.1 GB"
    ):
        parse_plan(a_plan(precision="bf16"), workload=workload, catalogue=catalogue)
    parse_plan(a_plan(precision="bf16", gpus_per_replica=4), workload=workload, catalogue=catalogue)


def test_the_day_is_priced_hour_by_hour_with_the_autoscaler(models, catalogue):
    workload = workload_for(models)
    plan = parse_plan(a_plan(), workload=workload, catalogue=catalogue)
    hourly = replicas_by_hour(plan, workload)
    assert max(hourly) == 160 == hourly[15]  # the peak hour runs every replica
    assert min(hourly) == max(4, math.ceil(10_000 * min(workload.daily_curve) / 60.0))
    day = daily_cost(plan, workload, catalogue)
    assert day["gpu_hours"] == sum(hourly)
    assert day["cost"] == pytest.approx(sum(hourly) * 2.50)
    requests = sum(10_000 * share * 3600 for share in workload.daily_curve)
    assert day["requests_per_dollar"] == pytest.approx(requests / day["cost"])
    assert day["cost_per_1k_tokens"] == pytest.approx(day["cost"] / (requests * 180 / 1000))


def test_a_workload_with_a_bad_curve_or_burst_is_refused(models):
    with pytest.raises(WorkloadError, match="daily_curve must be 24 fractions"):
        workload_for(models, daily_curve=[1.0] * 23)
    with pytest.raises(WorkloadError, match="burst.multiplier must be at least 1"):
        workload_for(models, burst={"multiplier": 0.5, "duration_s": 4, "ttft_p99_s": 1})
    curve = diurnal_curve(trough=0.2, peak_hour=20)
    assert max(curve) == 1.0 == curve[20] and min(curve) == pytest.approx(0.2, abs=0.01)


# -- the grader's planner -----------------------------------------------------------------------


def test_the_planner_ranks_fitting_configurations_and_searches_the_fewest_replicas(
    models, catalogue
):
    workload = workload_for(models)
    candidates = sized_candidates(workload, catalogue)
    costs = [c.cost_per_day for c in candidates]
    assert costs == sorted(costs) and len(candidates) > 5
    assert all(c.plan.gpu != "A100-SXM-80GB" or c.plan.precision == "bf16" for c in candidates)

    # A stand-in for the simulation: a plan passes with at least 123 replicas of its config.
    def check(plan):
        passes = plan.replicas >= 123
        return {
            "plan": plan.to_plain(),
            "slo_ratio": 0.5 if passes else 1.5,
            "burst_ratio": 0.5,
            "cost_per_day": daily_cost(plan, workload, catalogue)["cost"],
            "steady": {},
        }

    found = best_plan(workload, catalogue, check=check, finalists=1)
    best = found["best"]["plan"]
    assert 123 <= best["replicas"] <= 123 * 1.03 + 1  # within the search's 3%
    assert best["gpu"] == candidates[0].plan.gpu and found["checks"] <= 8


# -- the dashboard's arithmetic -----------------------------------------------------------------


def small_log():
    """Two GPUs over two 60 s windows, worked by hand below."""
    samples = [
        {"t_s": t, "index": gpu, "gpu_utilization_pct": u}
        for t, u0, u1 in [(0, 90, 2), (60, 1, None), (119, 80, 70)]
        for gpu, u in ((0, u0), (1, u1))
    ]
    requests = [
        {"finish_s": 10.0, "status": "ok", "output_tokens": 100},
        {"finish_s": 70.0, "status": "ok", "output_tokens": 50},
        {"finish_s": 20.0, "status": "error", "output_tokens": 999},  # failed: not served
        {"finish_s": None, "status": "ok", "output_tokens": 999},  # unfinished
        {"finish_s": 120.0, "status": "ok", "output_tokens": 999},  # after the window
    ]
    return {
        "start_s": 0.0,
        "end_s": 120.0,
        "interval_s": 60.0,
        "idle_below_pct": 5,
        "window_s": 60.0,
        "gpu_samples": samples,
        "requests": requests,
    }


def test_the_cost_report_counts_served_tokens_idle_samples_and_alert_windows():
    report = cost_report(small_log(), 3.0, min_requests_per_dollar=0.4)
    # 2 GPUs x 120 s = 1/15 GPU-hour; $0.20. Served: 2 requests, 150 output tokens.
    assert report["gpu_hours"] == pytest.approx(2 * 120 / 3600)
    assert report["cost"] == pytest.approx(0.2)
    assert (report["requests"], report["output_tokens"]) == (2, 150)
    assert report["cost_per_1k_tokens"] == pytest.approx(0.2 / 0.15)
    assert report["requests_per_dollar"] == pytest.approx(10.0)
    # 5 readable samples, 2 under 5%: 2 x 60 s idle.
    assert report["idle_gpu_hours"] == pytest.approx(120 / 3600)
    assert report["idle_fraction"] == pytest.approx(2 / 5)
    # Each window: 1 request for 2 GPUs x 60 s x $3/h = $0.10 -> 10 requests/$, above 0.4.
    assert report["alert_windows"] == [] and report["alert"] is False
    alerting = cost_report(small_log(), 3.0, min_requests_per_dollar=11.0)
    assert alerting["alert_windows"] == [0.0, 60.0] and alerting["alert"] is True


def test_reports_are_compared_field_by_field():
    expected = cost_report(small_log(), 3.0, 11.0)
    assert compare_reports(expected, dict(expected)) == []
    wrong = {**expected, "requests": 3, "alert": 1}
    del wrong["idle_fraction"]
    problems = compare_reports(expected, wrong)
    assert problems == [
        "requests: expected 2, got 3",
        "idle_fraction: missing",
        "alert: expected True, got 1",
    ]
    assert compare_reports(expected, [1]) == [
        f"the report is a list, not a dict with {', '.join(REPORT_FIELDS)}"
    ]
    close = {**expected, "cost": expected["cost"] * (1 + 1e-9)}
    assert compare_reports(expected, close) == []


def test_synthetic_logs_have_the_traps_and_a_threshold_that_splits_windows():
    log = synthetic_log(np.random.default_rng(9), gpus=3, windows=6)
    samples, requests = log["gpu_samples"], log["requests"]
    assert len(samples) == 3 * 6 * 60
    assert any(s["gpu_utilization_pct"] is None for s in samples)
    assert any(r["status"] == "error" for r in requests)
    assert any(r["finish_s"] is None for r in requests)
    assert any(r["finish_s"] is not None and r["finish_s"] >= log["end_s"] for r in requests)
    threshold = alert_threshold(log, 2.5)
    report = cost_report(log, 2.5, threshold)
    assert 0 < len(report["alert_windows"]) < 6
    again = synthetic_log(np.random.default_rng(9), gpus=3, windows=6)
    assert again == log  # fresh per seed, the same for the same seed


def test_gpu_entries_are_frozen_data():
    gpu = Gpu("x", "datasheet", 1.0, 1.0, MappingProxyType({"bf16": 1.0}), 1, 1.0, (), "s", "a")
    with pytest.raises(AttributeError):
        gpu.price_per_hour = 0.0  # type: ignore[misc]
