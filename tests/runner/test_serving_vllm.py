"""The serving lab's comparison with vLLM (runner/graders/serving_vllm.py): where vLLM is not
installed the report says so and measures nothing in its place; where it is, the grader starts
`python -m vllm.entrypoints.openai.api_server` on the committed model, sends the same burst
with the load harness and stops the server. The "installed" case runs a stand-in package
(tests/runner/fake_vllm) answered by the tests' fake server: it checks the plumbing (command,
readiness, measurement, clean-up), not vLLM."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from runner.graders import serving_vllm
from runner.serving.loadgen import RequestSpec

FAKE = Path(__file__).resolve().parent / "fake_vllm"
REPO = Path(__file__).resolve().parents[2]
REQUESTS = [RequestSpec(prompt=[1, 2, 3], max_tokens=4) for _ in range(3)]


def compare(tmp_path: Path, device: str = "cuda", **kwargs):
    return serving_vllm.compare_with_vllm(
        REQUESTS,
        device=device,
        model_dir=tmp_path / "model",
        model_name="target",
        dtype="float32",
        max_model_len=512,
        log_path=tmp_path / "vllm.log",
        **kwargs,
    )


def test_without_vllm_the_report_says_so_and_measures_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(serving_vllm.importlib.util, "find_spec", lambda name: None)
    result = compare(tmp_path)
    assert result == {
        "installed": False,
        "note": "vLLM is not installed on this worker, so it was not measured "
        "(nothing is estimated in its place).",
    }


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE), str(REPO)]))
    monkeypatch.setenv("FAKE_VLLM_ARGS", str(tmp_path / "args.json"))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    return tmp_path / "args.json"


def test_a_cpu_worker_does_not_start_vllm(tmp_path, fake_vllm):
    result = compare(tmp_path, device="cpu")
    assert result["installed"] is True and result["version"] == "0.0.1+fake"
    assert "CPU worker" in result["note"] and not fake_vllm.exists()


def test_where_installed_the_same_burst_is_measured_and_the_server_stopped(tmp_path, fake_vllm):
    result = compare(tmp_path, start_timeout_s=60, run_timeout_s=60)
    assert result["installed"] is True and result["version"] == "0.0.1+fake"
    assert result["burst"]["completed"] == 3 and result["burst"]["failed"] == 0
    argv = json.loads(fake_vllm.read_text())
    assert argv[argv.index("--model") + 1] == str(tmp_path / "model")
    assert argv[argv.index("--served-model-name") + 1] == "target"
    assert argv[argv.index("--max-model-len") + 1] == "512"
    # The process group is gone: the port no longer answers.
    port = int(argv[argv.index("--port") + 1])
    import socket

    with socket.socket() as probe, pytest.raises(OSError):
        probe.connect(("127.0.0.1", port))


def test_a_vllm_that_exits_at_start_is_reported_not_waited_for(tmp_path, fake_vllm, monkeypatch):
    monkeypatch.delenv("FAKE_VLLM_ARGS")  # the stand-in fails at once without it
    result = compare(tmp_path, start_timeout_s=60)
    assert "did not start serving" in result["note"] and "exited with status" in result["note"]
    assert "burst" not in result
