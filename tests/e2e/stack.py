"""The whole product as real processes, for end-to-end tests: a web server, the web-side
Celery worker (+ beat) and a grading worker, on a chosen database and broker.

Modes:
- embedded:  SQLite file + kombu's filesystem broker, runserver (what `make run` starts);
- redis:     PostgreSQL + Redis, gunicorn with collected static files;
- rabbitmq:  PostgreSQL + RabbitMQ, gunicorn with collected static files.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FINAL = {"passed", "failed", "error", "timeout", "rejected"}
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Stack:
    mode: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    database: str | None = None
    # The Celery app of grading workers; tests/e2e/fragile_worker.py wraps runner.worker's.
    grading_app: str = "runner.worker"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        dropped = (
            "DEBUG",
            "SECRET_KEY",
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "DJANGO_ALLOW_ASYNC_UNSAFE",
            "DJANGO_SETTINGS_MODULE",
        )
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env |= {
            "SECRET_KEY": "e2e-" + secrets.token_urlsafe(40),
            "VAR_DIR": str(self.workdir / "var"),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "0",
            "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0",
            "SECURE_HSTS_SECONDS": "0",
            "PYTHONUNBUFFERED": "1",
            "SWEEP_INTERVAL_S": "2",
        }
        if self.mode == "embedded":
            env["DEBUG"] = "1"
        else:
            env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{self.database}"
            env["CELERY_BROKER_URL"] = {
                "redis": "redis://127.0.0.1:6379/0",
                "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
            }[self.mode]
            env["STATIC_ROOT"] = str(self.workdir / "static")
            # With a production broker the worker refuses to grade without cgroup v2 memory
            # and process limits (docs/security.md). The development and CI hosts mount cgroups
            # in v1 "hybrid" mode, so these tests accept per-process limits explicitly.
            env["RUNNER_REQUIRE_CGROUP"] = "0"
        return env | self.extra_env

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if result.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def _spawn(self, name: str, cmd: list[str]) -> None:
        # Appended to, so that a restarted process's log follows its predecessor's.
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.mode != "embedded":
            self._create_database()
            self._purge_queues()
        self.manage("migrate", "--noinput")
        self.manage("load_curriculum")
        self.manage("load_labs")
        py = sys.executable
        if self.mode == "embedded":
            self._spawn(
                "web", [py, "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload"]
            )
        else:
            self.manage("collectstatic", "--noinput")
            self._spawn(
                "web",
                [py, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{self.port}", "-w", "2"],
            )
        self._spawn(
            "web-worker",
            [
                py,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-B",
                "-Q",
                "web",
                "-n",
                f"web-{self.port}@%h",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--schedule",
                str(self.workdir / "beat-schedule"),
            ],
        )
        self.start_grading_worker()
        deadline = time.monotonic() + 60
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"web server did not start:\n{self.log('web')}")
            time.sleep(0.2)
        return self

    def start_grading_worker(self) -> None:
        self._spawn(
            "grading-worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                self.grading_app,
                "worker",
                "-Q",
                "cpu",
                "-n",
                f"cpu-{self.port}-{uuid.uuid4().hex[:6]}@%h",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
            ],
        )

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"==== {n} ====\n{self.log(n)}" for n in self.processes)

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.database:
            self._drop_database()

    # --- talking to it, as a learner's terminal would ---

    def submit(
        self, notebook: Path, *, lab: str, learner: str, device_class: str | None = None
    ) -> dict:
        sys.path.insert(0, str(REPO / "static" / "cli"))
        try:
            import roadmap_submit
        finally:
            sys.path.pop(0)
        fields = {"learner": learner}
        if device_class:
            fields["device_class"] = device_class
        body, content_type = roadmap_submit.multipart(fields, "notebook", notebook)
        return roadmap_submit.request(
            f"{self.url}/api/v1/labs/{lab}/submissions", body, content_type
        )

    def status(self, submission_id: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/api/v1/submissions/{submission_id}") as r:
            return json.load(r)

    def wait(self, submission_id: str, *, timeout: float = 240, until=FINAL) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(submission_id)
            if status["status"] in until:
                return status
            for name, proc in self.processes.items():
                if proc.poll() is not None and name != "grading-worker":
                    raise RuntimeError(f"{name} died:\n{self.logs()}")
            time.sleep(0.3)
        raise TimeoutError(f"{submission_id} still {status['status']}:\n{self.logs()}")

    # --- production services ---

    def _create_database(self) -> None:
        import psycopg

        self.database = f"e2e_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')

    def _drop_database(self) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def _purge_queues(self) -> None:
        """Jobs left on a shared broker by an earlier run must not leak into this one."""
        subprocess.run(
            [sys.executable, "-m", "celery", "-A", "config", "purge", "-f", "-Q", "web,cpu"],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            timeout=60,
        )
