"""`make run`: the whole product on one machine — web server, the web-side Celery worker
with beat (records results, sweeps stuck submissions) and a grading worker — on the
embedded defaults (SQLite, filesystem broker). Ctrl-C stops everything it started.

On the first start (with DEBUG on) it also creates a local instructor account and prints
its password once; nothing about it is stored in the repository."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from labs.management.commands.create_instructor import InstructorExists, create_instructor

LOCAL_INSTRUCTOR = "instructor"


def stack_commands(port: int) -> dict[str, list[str]]:
    celery = [sys.executable, "-m", "celery"]
    return {
        "web": [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        # One process consumes the `web` queue (recording results) and runs the beat
        # scheduler (-B, the sweeper): fine on one machine; production runs beat once, alone.
        "web-worker": celery + ["-A", "config", "worker", "-B", "-Q", "web", "-n", "web@%h",
                                "--concurrency", "1", "--loglevel", "INFO"],
        # The grading worker: plain runner/ code, no Django, as on a GPU node.
        "grading-worker": celery + ["-A", "runner.worker", "worker", "-Q", "cpu", "-n",
                                    "cpu@%h", "--concurrency", "1", "--loglevel", "INFO"],
    }  # fmt: skip


class Command(BaseCommand):
    help = "Run the site with its Celery workers and beat on the embedded defaults."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    def handle(self, *args, port: int, **options):
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if shutil.which("bwrap") is None and not settings.RUNNER_ALLOW_UNSANDBOXED:
            # A laptop without bubblewrap still gets a working site, loudly marked unsafe.
            env["RUNNER_ALLOW_UNSANDBOXED"] = "1"
            self.stderr.write(
                self.style.WARNING(
                    "bubblewrap (bwrap) is not installed: the grading worker will run notebooks "
                    "WITHOUT a sandbox, and every page says so. Install it (apt-get install "
                    "bubblewrap) to grade safely."
                )
            )
        self.local_instructor(port)
        # SIGTERM (a process manager, `kill`) stops the stack as cleanly as Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
        children: dict[str, subprocess.Popen[bytes]] = {}
        for name, cmd in stack_commands(port).items():
            children[name] = subprocess.Popen(cmd, cwd=settings.BASE_DIR, env=env)
        self.stdout.write(
            self.style.SUCCESS(
                f"\nInference Roadmap is starting at http://127.0.0.1:{port}/\n"
                f"Running: {', '.join(children)}. Press Ctrl-C to stop them all.\n"
            )
        )
        try:
            while True:
                for name, child in children.items():
                    if child.poll() is not None:
                        self.stderr.write(
                            f"{name} exited with status {child.returncode}; stopping."
                        )
                        raise SystemExit(1)
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            _stop_all(children)

    def local_instructor(self, port: int) -> None:
        """A local instructor account on first start; its password is printed only then."""
        if not settings.DEBUG:
            return  # `make run` sets DEBUG; a production site uses create_instructor
        login = f"http://127.0.0.1:{port}/instructor/login/"
        try:
            _, password = create_instructor(LOCAL_INSTRUCTOR)
        except InstructorExists:
            self.stdout.write(
                f"Instructor pages: {login} as {LOCAL_INSTRUCTOR!r} (the password was printed "
                f"on the first start; `python manage.py changepassword {LOCAL_INSTRUCTOR}` "
                "sets a new one)."
            )
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Created a local instructor account: {LOCAL_INSTRUCTOR!r}, password {password}\n"
                f"It is shown only this once. Sign in at {login}"
            )
        )


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
