"""The harness's trusted side against hostile or broken children, in the real sandbox."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from runner.harness.client import Entry, HarnessFailure, ServedFunction
from runner.harness.correctness import compare_output
from runner.sandbox import ResourceLimits
from tests.runner.support import requires_bwrap

pytestmark = requires_bwrap

X = np.arange(6, dtype=np.float32).reshape(2, 3)


def serve(policy, tmp_path: Path, source: str, *, function: str = "f", locate=None):
    folder = tmp_path / "candidate"
    folder.mkdir(exist_ok=True)
    path = folder / "solution.py"
    path.write_text(textwrap.dedent(source))
    served = ServedFunction(
        entry=Entry(label=f"your {function}()", file=path, function=function),
        policy=policy,
        jobdir=folder,
        log_path=tmp_path / "candidate.log",
        limits=ResourceLimits(cpu_seconds=60, file_size_bytes=1 << 20),
        locate=locate,
    )
    served.wait_ready(timeout_s=60)
    return served


def test_a_well_behaved_function_answers_and_its_prints_go_to_the_log(policy, tmp_path):
    with serve(
        policy,
        tmp_path,
        """
        import os, sys
        print("hello from import")
        def f(x):
            print("PASSED " * 1000)
            os.write(1, b"raw bytes on fd 1")
            return x * 2
        """,
    ) as served:
        elapsed, result = served.timed_call([X], timeout_s=10)
        np.testing.assert_array_equal(result.arrays[0], X * 2)
        assert elapsed > 0
        assert "hello from import" in served.log_tail()
        assert "raw bytes on fd 1" in served.log_tail()


def test_a_child_that_exits_mid_call_is_an_error_naming_the_exit(policy, tmp_path):
    with (
        serve(policy, tmp_path, "import os\ndef f(x):\n    os._exit(0)\n") as served,
        pytest.raises(HarnessFailure) as failure,
    ):
        served.call([X], timeout_s=10)
    assert failure.value.kind == "error"
    assert "exited with code 0 while running on an input of shape 2x3" in failure.value.message


def test_a_child_that_hangs_is_a_timeout(policy, tmp_path):
    with (
        serve(policy, tmp_path, "import time\ndef f(x):\n    time.sleep(600)\n") as served,
        pytest.raises(HarnessFailure) as failure,
    ):
        served.call([X], timeout_s=1)
    assert failure.value.kind == "timeout"
    assert "did not answer within 1 s" in failure.value.message


def test_a_child_that_writes_garbage_to_the_channel_is_an_error(policy, tmp_path):
    source = """
    import os
    def f(x):
        for fd in map(int, os.listdir("/proc/self/fd")):
            if fd > 2:
                try:
                    os.write(fd, b"PASSED\\n" * 10)
                except OSError:
                    pass
        return x
    """
    with serve(policy, tmp_path, source) as served, pytest.raises(HarnessFailure) as failure:
        served.call([X], timeout_s=10)
    assert "wrote garbage to the grader's channel" in failure.value.message


def test_a_non_tensor_return_is_reported_not_fatal(policy, tmp_path):
    with serve(policy, tmp_path, "def f(x):\n    return None\n") as served:
        result = served.call([X], timeout_s=10)
    comparison = compare_output(
        got=None,
        expected=X.astype(float),
        dtype="float32",
        atol=0,
        rtol=0,
        returned_type=result.returned_type,
    )
    assert result.arrays is None
    assert comparison.problem == "returned NoneType, not a tensor"
    assert comparison.mismatched == X.size


def test_a_wrong_shape_or_dtype_is_a_mismatch_of_every_element(policy, tmp_path):
    with serve(policy, tmp_path, "def f(x):\n    return x.T.double()\n") as served:
        result = served.call([X], timeout_s=10)
    comparison = compare_output(
        got=result.arrays[0], expected=X.astype(float), dtype="float32", atol=0, rtol=0
    )
    assert comparison.problem == "returned shape (3, 2), expected (2, 3)"
    assert not comparison.ok


def test_an_exception_in_the_function_names_the_cell_and_line(policy, tmp_path):
    source = "def f(x):\n    y = 1\n    return x / 0 + undefined_name\n"
    with (
        serve(policy, tmp_path, source, locate=lambda line: (4, line)) as served,
        pytest.raises(HarnessFailure) as failure,
    ):
        served.call([X], timeout_s=10)
    assert failure.value.kind == "error"
    assert failure.value.message.startswith("Your f() raised NameError in cell 4, line 3")


def test_an_exception_at_import_is_reported_as_a_load_failure(policy, tmp_path):
    folder = tmp_path / "candidate"
    folder.mkdir()
    (folder / "solution.py").write_text("x = 1\nraise RuntimeError('boom')\n")
    served = ServedFunction(
        entry=Entry(label="your f()", file=folder / "solution.py", function="f"),
        policy=policy,
        jobdir=folder,
        log_path=tmp_path / "log",
        limits=ResourceLimits(cpu_seconds=60, file_size_bytes=1 << 20),
        locate=lambda line: (6, line),
    )
    with served, pytest.raises(HarnessFailure) as failure:
        served.wait_ready(timeout_s=60)
    assert failure.value.message == (
        "Loading your solution cells raised RuntimeError in cell 6, line 2: boom"
    )


def test_a_missing_function_lists_what_was_defined(policy, tmp_path):
    folder = tmp_path / "candidate"
    folder.mkdir()
    (folder / "solution.py").write_text("def softmx(x):\n    return x\n")
    served = ServedFunction(
        entry=Entry(label="your softmax()", file=folder / "solution.py", function="softmax"),
        policy=policy,
        jobdir=folder,
        log_path=tmp_path / "log",
        limits=ResourceLimits(cpu_seconds=60, file_size_bytes=1 << 20),
    )
    with served, pytest.raises(HarnessFailure) as failure:
        served.wait_ready(timeout_s=60)
    assert "do not define a function named 'softmax' (it defines: softmx)" in str(failure.value)


def test_pause_stops_every_process_of_the_child_and_resume_continues_them(policy, tmp_path):
    source = """
    import subprocess, sys
    SPINNER = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    def f(x):
        return x
    """
    with serve(policy, tmp_path, source) as served:
        served.pause()
        states = _states(served.process.pid)
        assert len(states) >= 3 and set(states) == {"T"}
        served.resume()
        assert "T" not in _states(served.process.pid)
        np.testing.assert_array_equal(served.call([X], timeout_s=10).arrays[0], X)


def _states(root: int) -> list[str]:
    from runner import proctree

    states = []
    for pid in [root, *proctree.descendants(root)]:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                states.append(stat.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            pass
    return states


def test_a_json_call_passes_data_and_returns_data(policy, tmp_path):
    source = "def plan(workload, *, scale=1):\n    return {'replicas': workload['rps'] * scale}\n"
    with serve(policy, tmp_path, source, function="plan") as served:
        call = served.call_json(
            {"args": [{"rps": 21}], "kwargs": {"scale": 2}}, timeout_s=10, doing="planning"
        )
    assert (call.answer, call.returned_instead, call.arrays) == ({"replicas": 42}, None, [])


def test_a_json_call_that_returns_objects_or_nan_is_named_not_fatal(policy, tmp_path):
    source = "import math\ndef f(kind):\n    return object() if kind == 'o' else {'x': math.nan}\n"
    with serve(policy, tmp_path, source) as served:
        call = served.call_json({"args": ["o"]}, timeout_s=10, doing="planning")
        assert call.answer is None and call.returned_instead.startswith("object")
        call = served.call_json({"args": ["n"]}, timeout_s=10, doing="planning")
        assert call.answer is None and "not JSON compliant" in call.returned_instead


def test_a_json_call_that_raises_names_the_line(policy, tmp_path):
    with (
        serve(policy, tmp_path, "def f():\n    return 1 / 0\n") as served,
        pytest.raises(HarnessFailure, match="ZeroDivisionError at line 2.*while planning"),
    ):
        served.call_json({}, timeout_s=10, doing="planning")
