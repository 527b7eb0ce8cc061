from __future__ import annotations

import os
import shutil

import pytest

from tests.e2e.stack import Stack, port_open

SERVICES = {"redis": 6379, "rabbitmq": 5672}


def require_services(mode: str) -> None:
    needed = {"postgres": 5432} | ({mode: SERVICES[mode]} if mode in SERVICES else {})
    missing = [name for name, port in needed.items() if not port_open(port)]
    if missing:
        message = f"{', '.join(missing)} not running on 127.0.0.1 (see .ci/services)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def require_sandbox() -> None:
    if shutil.which("bwrap") is None:
        message = "bubblewrap (bwrap) is not installed: the grading worker refuses to run"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    mode = request.param
    if mode != "embedded":
        require_services(mode)
    require_sandbox()
    running = Stack(mode=mode, workdir=tmp_path_factory.mktemp(f"stack-{mode}"))
    try:
        running.start()
        yield running
    finally:
        running.stop()
