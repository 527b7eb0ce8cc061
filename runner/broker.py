"""The Celery settings that the web app and the grading workers must agree on.

`runner/worker.py` reads these; config/settings.py states the same values for the Django side
(it may not import runner/), and tests/test_settings.py checks that the two agree. With no
CELERY_BROKER_URL the broker is kombu's filesystem transport under var/broker/: no server to
run, and web and worker processes on one machine share its folders (both read and write the
same queue folder).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BROKER_URL_ENV = "CELERY_BROKER_URL"
# The same names config/settings.py reads, so one environment configures both apps.
BROKER_DIR_ENV = "BROKER_DIR"
VAR_DIR_ENV = "VAR_DIR"

GRADE_TASK = "runner.grade"
RECORD_PROGRESS_TASK = "labs.record_progress"
RECORD_REPORT_TASK = "labs.record_report"
# Every RUNNER_HEARTBEAT_S seconds, from the main process of each worker (runner/heartbeat.py).
RECORD_HEARTBEAT_TASK = "labs.record_heartbeat"
# Sent instead of running a job whose earlier run on this node died with its process
# (runner/unfinished.py): the web side counts that run as an attempt.
RECORD_WORKER_LOST_TASK = "labs.record_worker_lost"
WEB_QUEUE = "web"


def grade_queue(device_class: str) -> str:
    """The queue a job for this device class goes to; workers listen with `-Q cpu` or `-Q gpu`."""
    return device_class


def var_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$VAR_DIR, else the repository's var/ folder: runtime state (broker, job folders)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(VAR_DIR_ENV) or Path(__file__).resolve().parent.parent / "var")


def broker_folder(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(BROKER_DIR_ENV) or var_dir(environ) / "broker")


def broker_settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Celery settings (lowercase names, for `app.conf.update`) from the environment.

    Creates the filesystem broker's folders when that broker is in use, because kombu does not.
    """
    environ = os.environ if environ is None else environ
    url = environ.get(BROKER_URL_ENV) or "filesystem://"
    settings: dict[str, Any] = {
        "broker_url": url,
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle from the broker would be code execution on the other side.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        # At-least-once: a job is acknowledged only after it ran, and put back if the worker
        # process dies mid-job; one job at a time per worker process.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
    }
    if url.startswith("filesystem://"):
        folder = broker_folder(environ)
        queue, processed, control = folder / "queue", folder / "processed", folder / "control"
        for path in (queue, processed, control):
            path.mkdir(parents=True, exist_ok=True)
        # Atomic publishing: runner/filesystem_broker.py says why kombu's own is not enough.
        settings["broker_transport"] = "runner.filesystem_broker:AtomicFilesystemTransport"
        settings["broker_transport_options"] = {
            # The same folder in and out: every process publishes where every process reads.
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(processed),
            "store_processed": False,
            "control_folder": str(control),
            # The default (1 s) would add up to a second to every hop between processes.
            "polling_interval": 0.1,
        }
    return settings
