"""The web side's Celery app: records reports and progress sent back by workers, runs the
periodic sweeper. Grading workers use runner/worker.py's app, which needs no Django."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("inference_roadmap")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
