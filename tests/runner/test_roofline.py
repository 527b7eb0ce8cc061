"""The roofline: judging times against measured peaks, the per-node cache, the plot. The cache
tests inject a fake measurement, so only one test really times anything (a small CPU run)."""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET

import pytest

from runner.measure.peaks import PEAKS_SCHEMA, _true_fp32
from runner.measure.roofline import (
    Peaks,
    Workload,
    assess,
    cache_filename,
    device_key,
    load_or_measure_peaks,
    measure_peaks,
    roofline_svg,
)

SVG = "{http://www.w3.org/2000/svg}"
# Round numbers, H100-like: 3 TB/s, 600 TFLOP/s bf16, 50 TFLOP/s fp32.
PEAKS = Peaks(
    memory_bytes_per_s=3e12,
    flops_per_s={"bf16": 600e12, "fp32": 50e12},
    device={"kind": "cuda", "name": "Test GPU", "driver": "1.0", "torch": "2.0"},
    measured_at="2025-01-01T00:00:00+00:00",
    method="made up for tests",
)
KEY = {"kind": "cuda", "name": "Test GPU", "driver": "1.0", "torch": "2.0"}


class FakeMeasure:
    """Stands in for measure_peaks: counts calls, returns PEAKS."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, device: str, **options) -> Peaks:
        self.calls.append((device, options))
        return PEAKS


# -- assess ------------------------------------------------------------------------------------


def test_a_memory_bound_time_is_placed_on_the_roofline():
    # 3 GB moved at 3 TB/s: the floor is 1 ms; 2 ms is 50% of the roofline.
    result = assess(Workload(bytes_moved=3_000_000_000, flops=1_000_000_000), 2e-3, PEAKS, "fp32")
    assert result.bound == "memory"
    assert result.memory_floor_s == pytest.approx(1e-3)
    assert result.compute_floor_s == pytest.approx(2e-5)
    assert result.floor_s == pytest.approx(1e-3)
    assert result.percent_of_roofline == pytest.approx(50)
    assert result.achieved_gb_per_s == pytest.approx(1500)
    assert result.achieved_tflop_per_s == pytest.approx(0.5)
    assert result.arithmetic_intensity == pytest.approx(1 / 3)
    assert not result.impossible
    assert result.message == (
        "2 ms per call: 1.5 TB/s and 500 GFLOP/s, 50% of the roofline (memory-bound, floor "
        "1 ms: 3 GB at the measured 3 TB/s)."
    )


def test_a_compute_bound_time_uses_the_peak_of_its_dtype():
    n = 8192
    matmul = Workload(bytes_moved=3 * n * n * 2, flops=2 * n**3)
    result = assess(matmul, 2 * n**3 / 480e12, PEAKS, "bf16")
    assert result.bound == "compute"
    assert result.percent_of_roofline == pytest.approx(80)
    assert result.achieved_tflop_per_s == pytest.approx(480)
    # The same time in fp32 would beat fp32's peak tenfold.
    assert assess(matmul, 2 * n**3 / 480e12, PEAKS, "fp32").impossible


def test_a_time_under_the_floor_beyond_the_tolerance_is_impossible():
    workload = Workload(bytes_moved=3_000_000_000, flops=0)  # floor 1 ms
    assert not assess(workload, 0.951e-3, PEAKS).impossible  # 4.9% under: within 5%
    result = assess(workload, 0.9e-3, PEAKS)
    assert result.impossible
    assert result.percent_of_roofline == pytest.approx(100 / 0.9)
    assert result.message == (
        "Measured 900 us per call, but this device needs at least 1 ms (memory-bound: 3 GB at "
        "the measured 3 TB/s); a time more than 5% under that floor is impossible, so the "
        "measurement is rejected."
    )
    assert not assess(workload, 0.9e-3, PEAKS, tolerance=0.2).impossible


def test_the_result_serialises_to_plain_values():
    data = assess(Workload(bytes_moved=1000, flops=0), 1e-6, PEAKS).to_dict()
    assert data["bound"] == "memory" and data["dtype"] is None
    assert data["achieved_gb_per_s"] == pytest.approx(1.0)
    json.dumps(data)


def test_assess_refuses_what_it_cannot_judge():
    with pytest.raises(ValueError, match="no measured matmul peak for dtype 'fp8'"):
        assess(Workload(bytes_moved=1, flops=1), 1.0, PEAKS, "fp8")
    with pytest.raises(ValueError, match="positive"):
        assess(Workload(bytes_moved=1, flops=0), 0.0, PEAKS)
    with pytest.raises(ValueError, match="moves some bytes or does some FLOPs"):
        Workload(bytes_moved=0, flops=0)
    with pytest.raises(ValueError, match="non-negative integer"):
        Workload(bytes_moved=-1, flops=0)


def test_a_workload_without_bytes_has_infinite_intensity():
    assert Workload(bytes_moved=0, flops=10).arithmetic_intensity == math.inf
    assert Workload(bytes_moved=4, flops=10).arithmetic_intensity == 2.5


# -- the cache ---------------------------------------------------------------------------------


def test_peaks_are_measured_once_then_read_from_the_cache(tmp_path):
    measure = FakeMeasure()
    first = load_or_measure_peaks(tmp_path, "cuda", key=KEY, measure=measure, matmul_n=4096)
    second = load_or_measure_peaks(tmp_path, "cuda", key=KEY, measure=measure)
    assert first == second == PEAKS
    assert measure.calls == [("cuda", {"matmul_n": 4096})]
    record = json.loads((tmp_path / cache_filename("cuda", KEY)).read_text())
    assert record["schema"] == PEAKS_SCHEMA
    assert record["key"] == KEY
    assert record["peaks"]["flops_per_s"] == {"bf16": 600e12, "fp32": 50e12}
    # Written atomically: no temporary file left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".peaks.lock",
        cache_filename("cuda", KEY),
    ]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        b"\xff\xfe binary",
        json.dumps({"schema": "something/else@1", "key": KEY, "peaks": PEAKS.to_dict()}),
        json.dumps(
            {
                "schema": PEAKS_SCHEMA,
                "key": KEY,
                "peaks": {**PEAKS.to_dict(), "memory_bytes_per_s": -1},
            }
        ),
        json.dumps({"schema": PEAKS_SCHEMA, "key": KEY, "peaks": {"flops_per_s": {}}}),
        json.dumps([1, 2, 3]),
    ],
    ids=["not-json", "binary", "other-schema", "negative-bandwidth", "missing-fields", "a-list"],
)
def test_a_corrupt_cache_file_is_ignored_and_measured_over(tmp_path, caplog, content):
    path = tmp_path / cache_filename("cuda", KEY)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    measure = FakeMeasure()
    with caplog.at_level(logging.WARNING, logger="runner.measure.peaks_cache"):
        assert load_or_measure_peaks(tmp_path, "cuda", key=KEY, measure=measure) == PEAKS
    assert len(measure.calls) == 1
    assert "ignoring the peaks cache" in caplog.text
    assert json.loads(path.read_text())["peaks"] == PEAKS.to_dict()  # repaired


def test_a_cache_file_for_another_node_is_measured_over(tmp_path, caplog):
    # A file copied in from another node (or an older driver) under this node's name.
    other = {**KEY, "driver": "0.9"}
    path = tmp_path / cache_filename("cuda", KEY)
    path.write_text(json.dumps({"schema": PEAKS_SCHEMA, "key": other, "peaks": PEAKS.to_dict()}))
    measure = FakeMeasure()
    with caplog.at_level(logging.WARNING):
        load_or_measure_peaks(tmp_path, "cuda", key=KEY, measure=measure)
    assert len(measure.calls) == 1
    assert "'driver': '0.9'" in caplog.text
    assert json.loads(path.read_text())["key"] == KEY


def test_a_new_driver_or_torch_means_a_new_measurement(tmp_path):
    measure = FakeMeasure()
    load_or_measure_peaks(tmp_path, "cuda", key=KEY, measure=measure)
    load_or_measure_peaks(tmp_path, "cuda", key={**KEY, "torch": "2.1"}, measure=measure)
    load_or_measure_peaks(tmp_path, "cuda", key=KEY, measure=measure)
    assert len(measure.calls) == 2


def test_an_unwritable_cache_still_gives_the_measurement(tmp_path, caplog, monkeypatch):
    from runner.measure import peaks_cache

    def refuse(path, text):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(peaks_cache, "_write_atomically", refuse)
    with caplog.at_level(logging.WARNING):
        assert load_or_measure_peaks(tmp_path, "cuda", key=KEY, measure=FakeMeasure()) == PEAKS
    assert "could not cache the measured peaks" in caplog.text


def test_the_cpu_key_names_the_cpu_threads_and_torch():
    import torch

    key = device_key("cpu")
    assert key["kind"] == "cpu"
    assert key["threads"] == torch.get_num_threads()
    assert key["torch"] == torch.__version__
    assert key["model"] and key["count"] >= 1


def test_peaks_round_trip_through_a_dict():
    assert Peaks.from_dict(json.loads(json.dumps(PEAKS.to_dict()))) == PEAKS


# -- measuring ---------------------------------------------------------------------------------


def test_measuring_the_cpu_gives_positive_plausible_peaks():
    peaks = measure_peaks("cpu", copy_bytes=16 << 20, matmul_n=256, repeats=3, warmup=1)
    # Any machine that runs the tests copies faster than 100 MB/s and slower than 10 TB/s,
    # and multiplies matrices faster than 100 MFLOP/s and slower than 100 TFLOP/s.
    assert 1e8 < peaks.memory_bytes_per_s < 1e13
    assert set(peaks.flops_per_s) == {"fp32"}
    assert 1e8 < peaks.flops_per_s["fp32"] < 1e14
    assert peaks.device["kind"] == "cpu"
    assert "dst.copy_(src)" in peaks.method and "256x256" in peaks.method
    assert peaks.measured_at.endswith("+00:00")
    assert Peaks.from_dict(peaks.to_dict()) == peaks


def test_measuring_refuses_an_unknown_device_or_dtype():
    with pytest.raises(ValueError, match="cuda or cpu"):
        measure_peaks("meta")
    with pytest.raises(ValueError, match="unknown matmul dtype 'int4'"):
        measure_peaks("cpu", copy_bytes=1 << 20, matmul_n=8, dtypes=["int4"], repeats=1)


def test_fp32_peaks_are_measured_without_tf32_and_the_setting_is_put_back():
    import torch

    matmul = torch.backends.cuda.matmul
    assert matmul.allow_tf32 is False  # PyTorch's default
    with _true_fp32(torch):
        assert matmul.allow_tf32 is False
    matmul.allow_tf32 = True
    try:
        with _true_fp32(torch):
            assert matmul.allow_tf32 is False
        assert matmul.allow_tf32 is True
    finally:
        matmul.allow_tf32 = False


# -- the plot ----------------------------------------------------------------------------------


def test_the_plot_is_an_svg_with_both_points_and_every_ceiling():
    svg = roofline_svg(
        PEAKS,
        [("your kernel", 0.625, 2.5e12), ("baseline", 0.625, 1e12)],
        title="softmax 4096x8192",
    )
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "your kernel" in texts and "baseline" in texts
    assert "memory 3 TB/s" in texts
    assert "bf16 matmul 600 TFLOP/s" in texts and "fp32 matmul 50 TFLOP/s" in texts
    assert len(root.findall(f"{SVG}circle")) == 2
    assert root.find(f"{SVG}rect").get("fill") == "white"  # readable on dark pages too
    assert "<script" not in svg


def test_labels_are_escaped():
    label = 'my <kernel> & "friends"'
    svg = roofline_svg(PEAKS, [(label, 1.0, 1e12)], title="<script>alert(1)</script>")
    assert "<kernel>" not in svg and "<script>" not in svg
    assert "my &lt;kernel&gt; &amp; &quot;friends&quot;" in svg
    root = ET.fromstring(svg)
    assert label in [t.text for t in root.iter(f"{SVG}text")]


def test_points_that_cannot_sit_on_log_axes_are_named_instead():
    svg = roofline_svg(PEAKS, [("copy", 0.0, 0.0), ("yours", 0.25, 5e11)], dtypes=["fp32"])
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "not on the plot (no FLOPs or no bytes): copy" in texts
    assert len(root.findall(f"{SVG}circle")) == 1
    assert not any(t and t.startswith("bf16") for t in texts)
