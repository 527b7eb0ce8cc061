"""`make run`, as a newcomer runs it: the site, the web worker with beat and a grading worker
come up on the embedded defaults, grade a submission, and Ctrl-C stops every one of them."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.e2e.conftest import require_sandbox
from tests.e2e.stack import REPO, Stack, free_port, port_open

pytestmark = pytest.mark.timeout(600)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_run_serves_grades_and_stops_on_ctrl_c(tmp_path):
    require_sandbox()
    port = free_port()
    dropped = ("DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env |= {"VAR_DIR": str(tmp_path / "var"), "PORT": str(port), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "run"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal would give it
        )
    try:
        deadline = time.monotonic() + 180
        while not (port_open(port) and "cpu@" in log.read_text() and "ready" in log.read_text()):
            assert make.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        text = log.read_text()
        assert f"http://127.0.0.1:{port}/" in text
        assert "Running: web, web-worker, grading-worker" in text

        site = Stack(mode="embedded", workdir=tmp_path, port=port)
        created = site.submit(
            REPO / "notebooks/softmax/reference.ipynb",
            lab="softmax",
            learner="0123456789abcdef0123456789abcdef",
        )
        final = site.wait(created["id"], timeout=180)
        assert final["status"] == "passed", final["message"]
    finally:
        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        try:
            make.wait(timeout=60)
        finally:
            deadline = time.monotonic() + 30
            while group_alive(make.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            leftover = group_alive(make.pid)
            if leftover:
                os.killpg(make.pid, signal.SIGKILL)
    assert not leftover, "Ctrl-C left processes of `make run` running"
    assert (tmp_path / "var" / "db.sqlite3").stat().st_size > 0
