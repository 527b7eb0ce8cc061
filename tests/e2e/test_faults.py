"""Faults with real processes (issue 4, "Faults"): a job delivered twice records one result;
a worker stopped with SIGTERM during a deploy loses nothing; a whole worker SIGKILLed mid-job
is recovered; a broker that is down when a learner submits loses nothing; a submission that
kills its worker every time ends in an error after the attempt cap, without a loop.
docs/security.md ("Faults") lists each case with its observed verdict."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import require_sandbox, require_services
from tests.e2e.stack import Stack, free_port

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "notebooks" / "softmax"
LEARNER = "0123456789abcdef0123456789abcdef"
REDIS_PORT = 6379
pytestmark = pytest.mark.timeout(600)


def finished_at(stack, submission_id: str) -> str:
    code = "from labs.models import Submission as S; print(S.objects.get(pk=ID).finished)"
    out = stack.manage("shell", "-v", "0", "-c", code.replace("ID", repr(submission_id)))
    return out.strip().splitlines()[-1]


def submission_row(stack, submission_id: str) -> dict:
    """What the database holds, including what the API does not show (the attempt)."""
    code = (
        "import json; from labs.models import Submission as S; "
        "s = S.objects.get(pk=ID); "
        "print(json.dumps({'status': s.status, 'attempt': s.attempt, 'message': s.message, "
        "'finished': str(s.finished)}))"
    )
    out = stack.manage("shell", "-v", "0", "-c", code.replace("ID", repr(submission_id)))
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_the_same_job_delivered_twice_is_recorded_once(stack):
    created = stack.submit(LAB / "reference.ipynb", lab="softmax", learner=LEARNER)
    # A second copy of the very same job message, as a broker redelivery would make.
    stack.manage(
        "shell", "-v", "0", "-c", f"from labs.tasks import dispatch; dispatch('{created['id']}')"
    )
    first = stack.wait(created["id"])
    assert first["status"] == "passed"
    recorded = finished_at(stack, created["id"])
    deadline = time.monotonic() + 120
    while len(re.findall(r"runner\.grade\[.*\] succeeded", stack.log("grading-worker"))) < 2:
        assert time.monotonic() < deadline, stack.log("grading-worker")
        time.sleep(0.5)
    time.sleep(2)  # let the second report reach the web worker
    assert finished_at(stack, created["id"]) == recorded
    assert "ignored a duplicate or stale report" in stack.log("web-worker")


@pytest.mark.parametrize(
    "stack", [pytest.param("redis", marks=pytest.mark.postgres)], indirect=True
)
def test_a_worker_stopped_during_a_deploy_loses_nothing(stack):
    created = stack.submit(LAB / "reference.ipynb", lab="softmax", learner=LEARNER)
    stack.wait(created["id"], until={"running"})
    worker = stack.processes["grading-worker"]
    os.killpg(worker.pid, signal.SIGTERM)  # what a deploy does: warm shutdown
    worker.wait(timeout=300)
    stack.start_grading_worker()  # the new release's worker
    final = stack.wait(created["id"])
    assert final["status"] == "passed", final["message"]


# --- Stacks of their own: a private Redis database, their own settings --------------------


def claim_redis_db() -> int:
    """A Redis database of this test's own (1-15; other stacks use 0), so that no other test
    stack on this machine consumes its jobs, and its leftovers can be flushed."""
    import redis

    for db in random.sample(range(1, 16), 15):
        if redis.Redis(port=REDIS_PORT, db=db).set("e2e:owner", os.getpid(), nx=True, ex=3600):
            return db
    pytest.skip("every Redis database 1-15 is in use by other test stacks")


@pytest.fixture
def start_stack(tmp_path):
    """start_stack(mode, broker_port=.., grading_app=.., **env) -> a started Stack of its own,
    stopped (and its Redis database flushed) after the test."""
    import redis

    stacks: list[Stack] = []
    databases: list[int] = []

    def start(
        mode: str, *, broker_port: int = REDIS_PORT, grading_app: str = "runner.worker", **env
    ) -> Stack:
        require_services(mode)
        require_sandbox()
        if mode == "redis":
            databases.append(claim_redis_db())
            env["CELERY_BROKER_URL"] = f"redis://127.0.0.1:{broker_port}/{databases[-1]}"
        stack = Stack(
            mode=mode,
            workdir=tmp_path / f"stack-{len(stacks)}",
            extra_env=env,
            grading_app=grading_app,
        )
        stacks.append(stack)
        return stack.start()

    yield start
    for stack in stacks:
        stack.stop()
    for db in databases:
        redis.Redis(port=REDIS_PORT, db=db).flushdb()


def redis_of(stack):
    import redis

    return redis.Redis.from_url(stack.env()["CELERY_BROKER_URL"])


def kill_whole_grading_worker(stack) -> None:
    """SIGKILL to the worker's process group: the main process and its pool at once, as
    `docker kill` of a worker's container or the loss of its node would."""
    worker = stack.processes["grading-worker"]
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # sandboxes die with their parent (bwrap --die-with-parent)
        try:
            os.killpg(worker.pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "a process of the killed worker is still running"
        time.sleep(0.1)


def set_lab_time_limit(stack, *, total_timeout_s: int) -> None:
    """Give the lab a shorter time limit, so that the sweeper's lease (the lab's limit plus
    SUBMISSION_RUNNING_GRACE_S of silence) runs out in seconds rather than minutes."""
    code = (
        "from labs.models import Lab; lab = Lab.objects.get(slug='softmax'); "
        f"lab.limits = lab.limits | {{'total_timeout_s': {total_timeout_s}}}; lab.save()"
    )
    stack.manage("shell", "-v", "0", "-c", code)


def whole_log(stack, name: str) -> str:
    """All of a process's log (Stack.log keeps only its end, for error messages)."""
    return (stack.workdir / f"{name}.log").read_text(errors="replace")


def recorded_verdicts(stack, submission_id: str) -> list[str]:
    return re.findall(rf"recorded (\w+) for {submission_id} ", whole_log(stack, "web-worker"))


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["redis", "rabbitmq"])
def test_a_whole_worker_killed_mid_job_is_graded_again_with_one_verdict(start_stack, mode):
    """SIGKILL of the whole grading worker (main process and pool) mid-job, then a new
    worker, as a supervisor would start. Nothing acknowledged the job, so:

    - RabbitMQ puts it back at once (the connection died); the new worker finds the mark the
      killed run left on the node's disk and reports the run lost instead of running it; the
      web side counts that attempt and sends attempt 2, which is graded.
    - Redis keeps an unacknowledged message for its visibility timeout (an hour), so the
      sweeper recovers it: the submission went silent for longer than the lab's time limit
      plus the grace, and is sent again as attempt 2.

    Either way: one verdict, recorded once, on attempt 2."""
    stack = start_stack(mode, SUBMISSION_RUNNING_GRACE_S="2")
    set_lab_time_limit(stack, total_timeout_s=20)
    created = stack.submit(LAB / "reference.ipynb", lab="softmax", learner=LEARNER)
    stack.wait(created["id"], until={"running"})
    time.sleep(0.5)
    kill_whole_grading_worker(stack)
    stack.start_grading_worker()

    final = stack.wait(created["id"], timeout=180)
    assert final["status"] == "passed", final["message"] + stack.logs()
    row = submission_row(stack, created["id"])
    assert row["attempt"] == 2, row
    if mode == "rabbitmq":
        assert "never finished" in whole_log(stack, "grading-worker")
    else:
        assert "'retried': 1" in whole_log(stack, "web-worker")
    time.sleep(3)  # anything still in flight would arrive now
    assert recorded_verdicts(stack, created["id"]) == ["passed"]
    assert submission_row(stack, created["id"])["finished"] == row["finished"]


# --- The broker is down when a learner submits ---------------------------------------------


class BrokerLink:
    """A TCP relay in front of the machine's broker: taking it down is a broker outage for one
    stack only (connections refused, open ones cut), while the shared Redis keeps serving
    every other stack on this machine."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            cut, self._open = self._open, set()
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
            listener.close()
        for sock in cut:
            _shut(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                if self._listener is not listener:
                    return
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    _shut(client)
                    _shut(upstream)
                    return
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _shut(sink)
        _shut(source)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def broker_link():
    link = BrokerLink(REDIS_PORT)
    link.up()
    yield link
    link.down()


@pytest.mark.postgres
def test_a_submission_made_while_the_broker_is_down_is_kept_and_graded_later(
    start_stack, broker_link
):
    """PostgreSQL + Redis, every process of the stack reaching Redis through a relay that the
    test takes down. The learner submits during the outage: the upload is accepted (201),
    stored as queued, and the answer says that grading waits for the grading service; once
    the broker is back, the sweeper sends it and it gets its verdict. A submission after the
    outage is sent at once, so the web processes reconnected by themselves."""
    stack = start_stack("redis", broker_port=broker_link.port)
    broker_link.down()
    started = time.monotonic()
    created = stack.submit(LAB / "reference.ipynb", lab="softmax", learner=LEARNER)
    answered_in = time.monotonic() - started
    assert created["status"] == "queued"
    assert "unreachable" in created["message"] and "sent automatically" in created["message"]
    assert answered_in < 15, f"the learner waited {answered_in:.1f} s for an answer"
    status = stack.status(created["id"])
    assert status["status"] == "queued" and status["message"] == created["message"]
    with urllib.request.urlopen(created["url"]) as page:
        assert "sent automatically" in page.read().decode()
    time.sleep(3)  # several sweeps would have run by now, had they reached the broker
    assert stack.status(created["id"])["status"] == "queued"

    broker_link.up()
    final = stack.wait(created["id"], timeout=180)
    assert final["status"] == "passed", final["message"] + stack.logs()
    assert "unreachable" not in final["message"]
    assert "'sent': 1" in whole_log(stack, "web-worker")

    again = stack.submit(LAB / "reference.ipynb", lab="softmax", learner=LEARNER)
    assert again["message"] == ""
    assert stack.wait(again["id"], timeout=180)["status"] == "passed"


# --- A submission that kills its worker every time -----------------------------------------


def marked_notebook(tmp_path: Path, mark: str) -> Path:
    """The reference solution with a markdown cell carrying the mark the fragile worker
    looks for; it would pass if its worker survived."""
    nb = json.loads((LAB / "reference.ipynb").read_text())
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": mark})
    path = tmp_path / "kills_its_worker.ipynb"
    path.write_text(json.dumps(nb))
    return path


@pytest.mark.postgres
def test_a_submission_that_kills_its_worker_every_time_ends_in_error_after_the_cap(
    start_stack, tmp_path
):
    """A grading worker whose pool process is SIGKILLed mid-job whenever it grades the marked
    submission (tests/e2e/fragile_worker.py says why that stands in for the OOM killer or a
    crash in native code). acks_late + reject_on_worker_lost put the job back at once, so
    without a cap the same worker would take it again and die again, for ever: the mark the
    dead run left on disk makes the next delivery report the run lost instead of running it,
    and the web side counts attempts. After SUBMISSION_MAX_ATTEMPTS (3) runs, each killed,
    the submission is an error that says so; nothing is left in the queue; the same worker
    then grades the next submission normally."""
    mark = f"e2e-kill-{secrets.token_hex(4)}"
    stack = start_stack("redis", grading_app="tests.e2e.fragile_worker", E2E_KILL_WORKER_ON=mark)
    created = stack.submit(marked_notebook(tmp_path, mark), lab="softmax", learner=LEARNER)

    final = stack.wait(created["id"], timeout=240)
    assert final["status"] == "error", final["message"] + stack.logs()
    assert "after 3 attempts" in final["message"]
    killed = rf"fragile worker: SIGKILL of pool process \d+ grading {created['id']} attempt (\d)"
    assert re.findall(killed, whole_log(stack, "grading-worker")) == ["1", "2", "3"]

    # Nothing left in the broker: the last delivery's ack may land a moment after its report
    # (it follows the task's return), later still on a loaded machine, so wait for it a while.
    broker = redis_of(stack)
    deadline = time.monotonic() + 30
    while broker.llen("cpu") or broker.hlen("unacked"):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"left in the broker: {broker.llen('cpu')} queued, "
                f"unacked {broker.hgetall('unacked')}\n{whole_log(stack, 'grading-worker')}"
            )
        time.sleep(0.5)
    time.sleep(5)  # a redelivery loop would show here (without the cap: a kill every 3 s)
    assert len(re.findall(killed, whole_log(stack, "grading-worker"))) == 3
    assert stack.processes["grading-worker"].poll() is None

    healthy = stack.submit(LAB / "reference.ipynb", lab="softmax", learner=LEARNER)
    assert stack.wait(healthy["id"], timeout=180)["status"] == "passed"
