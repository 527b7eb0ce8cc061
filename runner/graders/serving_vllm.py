"""The `serving` lab's comparison with vLLM, where vLLM is installed: the same load harness and
the same burst against `vllm serve` on the same model, shown beside the learner's engine and
the baseline. It grades nothing. Where vLLM is not installed, or the worker has no GPU, the
report says so and nothing stands in for it: no estimate, no figure from elsewhere.

vLLM is trusted software serving the committed model, so it runs outside the sandbox, in its
own session on a loopback port, and is stopped (the whole process group) when the run ends.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from runner.serving.loadgen import RequestSpec, run_coroutine, run_load_sync, wait_for_server

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def installed_version() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def compare_with_vllm(
    requests: list[RequestSpec],
    *,
    device: str,
    model_dir: Path,
    model_name: str,
    dtype: str,
    max_model_len: int,
    log_path: Path,
    start_timeout_s: float = 600,
    run_timeout_s: float = 600,
) -> dict[str, Any]:
    version = installed_version()
    if version is None:
        return {
            "installed": False,
            "note": "vLLM is not installed on this worker, so it was not measured "
            "(nothing is estimated in its place).",
        }
    if device != "cuda":
        return {
            "installed": True,
            "version": version,
            "note": "vLLM is installed but this is a CPU worker: it is measured on GPU workers.",
        }
    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        SERVER_MODULE,
        "--model",
        str(model_dir),
        "--served-model-name",
        model_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(  # noqa: S603 - our own argv
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, url, start_timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported, never graded
            return {
                "installed": True,
                "version": version,
                "note": f"vLLM {version} did not start serving within {start_timeout_s:g} s "
                f"({exc}); see {log_path.name}.",
            }
        result = run_load_sync(
            url,
            requests,
            model=model_name,
            timeout_s=run_timeout_s,
            overall_timeout_s=run_timeout_s,
        )
        return {
            "installed": True,
            "version": version,
            "command": " ".join(argv[1:]),
            "burst": result.summary(percentiles=(50, 90, 99)),
        }
    finally:
        _stop(process)


def _wait_ready(process: subprocess.Popen, url: str, timeout_s: float) -> None:
    """Until the server answers /v1/models (vLLM loads the model first), or it exits."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer to GET /v1/models")
        try:
            run_coroutine(wait_for_server(url, timeout_s=min(left, 5.0)))
            return
        except TimeoutError:
            continue


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait_s)
            return
