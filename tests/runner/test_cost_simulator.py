"""The fleet simulator (runner/cost/simulate.py): exact times on tiny cases worked by hand,
continuous batching and the KV budget, routing, the warm start, the step log, and agreement
with closed-form queueing (M/M/1, M/M/c with Erlang C) with batching off.

Every test is deterministic (fixed seeds); the queueing tests take about a second each.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from runner.cost.metrics import latency_summary, percentile, tpot_until
from runner.cost.queueing import erlang_c, mm1_mean_wait, mmc_mean_wait, servers_for_wait
from runner.cost.simulate import EngineModel, RunningAtStart, simulate_fleet
from runner.cost.traffic import LengthDistribution, arrival_times


def fixed_step(seconds: float, *, max_batch: int = 1, kv_budget: int = 10**9) -> EngineModel:
    """An engine whose every step takes `seconds`, whatever it holds."""
    return EngineModel(
        weight_read_s=0.0,
        kv_read_s_per_token=0.0,
        compute_s_per_token=0.0,
        overhead_s=seconds,
        kv_budget_tokens=kv_budget,
        max_batch=max_batch,
        max_prefill_tokens=10**9,
    )


def run(arrival, output, *, prompt=None, **kwargs):
    arrival = np.asarray(arrival, dtype=float)
    output = np.asarray(output)
    prompt = np.zeros(len(arrival), dtype=np.int64) if prompt is None else np.asarray(prompt)
    return simulate_fleet(arrival, prompt, output, **kwargs)


# -- exact times on cases worked by hand ------------------------------------------------------


def test_a_lone_request_gets_its_first_token_after_one_step_and_one_more_per_token():
    result = run([0.5], [4], engine=fixed_step(0.01), replicas=1)
    assert result.first_token[0] == pytest.approx(0.51)
    assert result.finish[0] == pytest.approx(0.54)  # 3 more decode steps
    assert result.steps == 4


def test_without_batching_a_second_request_waits_for_the_first_to_finish():
    result = run([0.0, 0.005], [3, 2], engine=fixed_step(0.01, max_batch=1), replicas=1)
    np.testing.assert_allclose(result.first_token, [0.01, 0.04])
    np.testing.assert_allclose(result.finish, [0.03, 0.05])


def test_with_continuous_batching_it_joins_at_the_next_step():
    result = run([0.0, 0.005], [3, 2], engine=fixed_step(0.01, max_batch=8), replicas=1)
    np.testing.assert_allclose(result.first_token, [0.01, 0.02])
    np.testing.assert_allclose(result.finish, [0.03, 0.03])


def test_a_step_costs_its_roofline_time():
    # 1 ms overhead; 10 ms to read the weights, 1 us per token of KV, 0.1 ms per token of
    # compute. One request: prompt 100, output 3 (average context 101.5 tokens).
    engine = EngineModel(
        weight_read_s=0.010,
        kv_read_s_per_token=1e-6,
        compute_s_per_token=1e-4,
        overhead_s=0.001,
        kv_budget_tokens=10_000,
        max_batch=8,
        max_prefill_tokens=2048,
    )
    assert engine.step_time(decode=0, context_tokens=101.5, prefill_tokens=100) == pytest.approx(
        0.001 + max(0.010 + 101.5e-6, 100 * 1e-4)
    )
    result = run([0.0], [3], prompt=[100], engine=engine, replicas=1)
    prefill = 0.001 + max(0.0101015, 0.0100)
    decode = 0.001 + max(0.0101015, 1e-4)
    assert result.first_token[0] == pytest.approx(prefill)
    assert result.finish[0] == pytest.approx(prefill + 2 * decode)


def test_a_full_replica_jumps_over_identical_steps_in_one_event():
    result = run([0.0], [1000], engine=fixed_step(0.001), replicas=1)
    assert result.finish[0] == pytest.approx(1.0)
    assert result.steps == 1000
    assert result.events <= 3


def test_the_prefill_budget_spreads_a_crowd_of_prompts_over_steps():
    engine = EngineModel(0.0, 0.0, 0.0, 0.01, 10**9, 64, max_prefill_tokens=250)
    result = run([0.0] * 5, [2] * 5, prompt=[100] * 5, engine=engine, replicas=1)
    # Two prompts of 100 fit a 250-token budget per step: steps 1, 1, 2, 2, 3.
    np.testing.assert_allclose(result.first_token, [0.01, 0.01, 0.02, 0.02, 0.03])


def test_the_kv_budget_holds_requests_back_and_refuses_those_that_never_fit():
    engine = fixed_step(0.01, max_batch=8, kv_budget=100)
    result = run([0.0, 0.0, 0.0], [10, 10, 10], prompt=[50, 31, 200], engine=engine, replicas=1)
    # Reservations: 60 + 41 > 100, so the second waits for the first; the third needs 210.
    assert result.first_token[0] == pytest.approx(0.01)
    assert result.first_token[1] == pytest.approx(result.finish[0] + 0.01)
    assert result.rejected.tolist() == [False, False, True]
    assert math.isinf(result.first_token[2]) and result.replica[2] == -1


def test_stopping_early_leaves_unserved_requests_infinite():
    result = run([0.0, 0.0], [100, 100], engine=fixed_step(0.01), replicas=1, stop_at=0.5)
    assert math.isinf(result.finish[0]) and math.isinf(result.first_token[1])


def test_continuous_batching_multiplies_throughput_on_a_memory_bound_engine():
    # Reading the weights dominates; a batch shares one read.
    engine = EngineModel(0.01, 0.0, 1e-5, 0.0, 10**9, 1, 10**9)
    rng = np.random.default_rng(1)
    arrival = np.sort(rng.uniform(0, 1, 400))
    output = np.full(400, 50)
    one = run(arrival, output, engine=engine, replicas=1)
    batched = run(
        arrival, output, engine=EngineModel(0.01, 0.0, 1e-5, 0.0, 10**9, 64, 10**9), replicas=1
    )
    assert batched.finish.max() < one.finish.max() / 20


# -- routing ------------------------------------------------------------------------------------


def test_least_loaded_routing_avoids_the_busy_replica_round_robin_does_not():
    arrival, output = [0.0, 0.001, 0.05], [100, 2, 2]  # the second is done by 0.05
    engine = fixed_step(0.01, max_batch=1)
    robin = run(arrival, output, engine=engine, replicas=2, routing="round_robin")
    least = run(arrival, output, engine=engine, replicas=2, routing="least_loaded")
    assert robin.replica.tolist() == [0, 1, 0]
    assert robin.first_token[2] > 1.0  # behind the 100-token request
    assert least.replica[2] == 1 and least.first_token[2] == pytest.approx(0.06)


def test_a_shared_queue_serves_in_arrival_order_on_whichever_replica_frees_first():
    result = run(
        [0.0, 0.0, 0.001], [10, 3, 1], engine=fixed_step(0.01), replicas=2, routing="shared_queue"
    )
    # The third request goes to the replica that finishes first (the 3-token one, at 0.03).
    assert result.replica[2] == result.replica[1]
    assert result.first_token[2] == pytest.approx(0.04)


def test_routing_and_replicas_are_checked():
    with pytest.raises(ValueError, match="routing must be one of"):
        run([0.0], [1], engine=fixed_step(0.01), replicas=1, routing="random")
    with pytest.raises(ValueError, match="replicas must be at least 1"):
        run([0.0], [1], engine=fixed_step(0.01), replicas=0)
    with pytest.raises(ValueError, match="sorted"):
        run([1.0, 0.0], [1, 1], engine=fixed_step(0.01), replicas=1)


# -- warm start and the step log ----------------------------------------------------------------


def test_a_warm_start_runs_its_requests_from_time_zero_and_new_ones_join_them():
    warm = RunningAtStart(
        replica=np.array([0, 0]),
        prompt=np.array([10, 10]),
        output=np.array([50, 50]),
        remaining=np.array([3, 5]),
    )
    result = run([0.015], [2], engine=fixed_step(0.01, max_batch=8), replicas=1,
                 running_at_start=warm)  # fmt: skip
    assert result.preloaded == 2
    np.testing.assert_allclose(result.finish[:2], [0.03, 0.05])
    assert result.first_token[2] == pytest.approx(0.03)  # joins the step starting at 0.02
    assert result.arrival[0] < 0  # kept out of every latency window


def test_the_step_log_gives_every_token_time_and_tpot_until_a_time():
    rng = np.random.default_rng(7)
    arrival = np.sort(rng.uniform(0, 2, 300))
    output = rng.integers(1, 60, 300)
    engine = EngineModel(0.004, 1e-7, 1e-5, 0.001, 10**9, 16, 512)
    result = run(arrival, output, prompt=rng.integers(1, 200, 300), engine=engine, replicas=3)
    chosen = np.ones(300, dtype=bool)
    multi = output > 1
    whole = (result.finish - result.first_token)[multi] / (output[multi] - 1)
    np.testing.assert_allclose(np.sort(tpot_until(result, chosen, 1e9)), np.sort(whole))
    # A request's n-th token is the end of step admit_step + n - 1 of its replica.
    ends = result.segments.step_end(result.replica, result.admit_step + output - 1)
    np.testing.assert_allclose(ends, result.finish)
    # Cut at t = 1: only tokens produced by then count.
    early = tpot_until(result, chosen, 1.0)
    assert len(early) < multi.sum()


def test_percentiles_keep_infinity_for_requests_never_served():
    assert percentile(np.array([1.0, 2.0, math.inf]), 50) == 2.0
    assert percentile(np.array([1.0, math.inf, math.inf]), 99) == math.inf
    summary = latency_summary(
        run([0.0, 0.0], [5, 5], engine=fixed_step(0.01), replicas=1, stop_at=0.02),
        arrived_from=0,
        arrived_until=1,
    )
    assert summary["completed_fraction"] == 0.0 and summary["ttft_p99_s"] == math.inf


# -- agreement with closed-form queueing ---------------------------------------------------------


def queue_waits(*, servers: int, load: float, customers: int, seed: int) -> np.ndarray:
    """Queueing delays of an M/M/c queue simulated as a fleet: `servers` replicas with
    batching off (max_batch 1) pulling from one FIFO (shared_queue); service rate 1 per
    second: each request is a geometric number of 1 ms steps, mean 1000 (exponential to
    within a 0.1% difference in its second moment, far below the tolerances here)."""
    rng = np.random.default_rng(seed)
    rate = load * servers
    arrival = arrival_times(rng, [(customers / rate, rate)])
    output = rng.geometric(1e-3, len(arrival))
    result = run(
        arrival,
        output,
        engine=fixed_step(1e-3, max_batch=1),
        replicas=servers,
        routing="shared_queue",
    )
    return result.first_token - arrival - 1e-3  # the wait before its first step starts


def batch_means(values: np.ndarray, *, batches: int = 40) -> tuple[float, float]:
    """(mean, standard error) from the means of consecutive batches: waits in a queue are
    correlated, so the naive sigma / sqrt(n) would understate the error; batches much longer
    than the queue's relaxation time are close to independent."""
    means = np.array([b.mean() for b in np.array_split(values, batches)])
    return float(values.mean()), float(means.std(ddof=1) / math.sqrt(batches))


def test_with_one_replica_and_batching_off_it_is_an_mm1_queue():
    # rho = 0.5: mean wait rho / (mu - lambda) = 1 s. 80K customers after a 2K warm-up, in
    # 40 batches of 2K customers (the queue's relaxation time is about 12 customers).
    waits = queue_waits(servers=1, load=0.5, customers=82_000, seed=11)[2000:]
    mean, error = batch_means(waits)
    expected = mm1_mean_wait(arrival_rate=0.5, service_rate=1.0)
    assert expected == 1.0
    # The test can fail: its tolerance, 4 standard errors, is under 10% of the answer.
    assert 4 * error < 0.1 * expected
    assert abs(mean - expected) <= 4 * error, (mean, error)
    assert (waits > 1e-9).mean() == pytest.approx(0.5, abs=0.02)  # P(wait) = rho


def test_with_c_replicas_pulling_one_queue_it_is_an_mmc_queue_erlang_c():
    # c = 4, rho = 0.75: P(wait) = C(4, 3) = 0.509, mean wait C / (c mu - lambda) = 0.509 s.
    # Waits are more correlated here: 200K customers bring 4 standard errors under 12%.
    waits = queue_waits(servers=4, load=0.75, customers=202_000, seed=12)[2000:]
    mean, error = batch_means(waits)
    expected = mmc_mean_wait(arrival_rate=3.0, service_rate=1.0, servers=4)
    assert expected == pytest.approx(0.5094, abs=1e-4)
    assert 4 * error < 0.12 * expected
    assert abs(mean - expected) <= 4 * error, (mean, error)
    waited = (waits > 1e-9).mean()
    # P(wait) from 200K correlated customers: 40 batch means give its error too.
    p_mean, p_error = batch_means((waits > 1e-9).astype(float))
    assert abs(waited - erlang_c(4, 3.0)) <= 4 * p_error
    assert p_mean == waited


def test_erlang_c_matches_textbook_values_and_stays_stable_for_large_fleets():
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert 0 < erlang_c(5000, 4900.0) < 1  # the factorial formula overflows here
    # 97 servers make 90 requests/s wait 52 ms on average, 98 servers 38 ms.
    assert servers_for_wait(arrival_rate=90, service_rate=1, mean_wait=0.05) == 98
    with pytest.raises(ValueError, match="below the number of servers"):
        erlang_c(2, 2.0)


# -- traffic --------------------------------------------------------------------------------------


def test_poisson_arrivals_have_the_rate_and_segments_their_own_rates():
    rng = np.random.default_rng(3)
    times = arrival_times(rng, [(10.0, 1000.0), (5.0, 3000.0)])
    assert np.all(np.diff(times) >= 0)
    first, second = (times < 10).sum(), (times >= 10).sum()
    assert abs(first - 10_000) < 4 * math.sqrt(10_000)
    assert abs(second - 15_000) < 4 * math.sqrt(15_000)
    gaps = np.diff(times[times < 10])
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.05)  # exponential


def test_gamma_arrivals_below_one_are_burstier():
    rng = np.random.default_rng(4)
    gaps = np.diff(arrival_times(rng, [(20.0, 500.0)], burstiness=0.25))
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(2.0, rel=0.1)  # CV = 1/sqrt(shape)


def test_lengths_are_lognormal_with_the_mean_asked_and_clipped():
    rng = np.random.default_rng(5)
    lengths = LengthDistribution(mean=600, sigma=0.6, max=4096).sample(rng, 200_000)
    assert lengths.min() >= 1 and lengths.max() <= 4096
    assert lengths.mean() == pytest.approx(600, rel=0.01)
