"""Files a grader hands back with a report for the learner to download (the profiling lab's
Chrome trace), and the view that serves them.

A report carries them as `artifacts: [{name, content_type, data_base64}]` (runner/schema.py,
the data gzip'd then base64-encoded). labs/tasks.py takes them out of the report before it is
stored, so the report JSON that every page loads stays small, and keeps them here, one row per
file, beside the submission. A regrade's report replaces the files of the one before.

A download is allowed to whoever may see the submission's page: there are no learner
accounts, so the submission's unguessable id in the URL is the permission, for the page and
for its files alike. Imported by labs/models.py, which registers the model.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterable
from typing import Any

from django.db import models
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.views.decorators.http import require_GET

from labs.models import Submission

log = logging.getLogger(__name__)

# Only what a grader produces: a gzip'd file. Served as an attachment whatever the type.
CONTENT_TYPES = ("application/gzip",)
# The profiling lab caps a trace at 20 MB before compression; gzip'd it is a few MB.
MAX_BYTES = 16 << 20
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class SubmissionArtifact(models.Model):
    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=100)
    content_type = models.CharField(max_length=100)
    data = models.BinaryField()
    size = models.PositiveIntegerField()
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["submission", "name"], name="artifact_name_per_submission"
            )
        ]

    def __str__(self) -> str:
        return f"{self.submission_id}/{self.name} ({self.size} bytes)"

    @property
    def filename(self) -> str:
        """What the browser saves it as: the lab and the submission, then the file's name."""
        return f"{self.submission.lab.slug}-{str(self.submission_id)[:8]}-{self.name}"


def split_artifacts(report: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """(the report without its artifacts, the artifacts): they are stored as rows, not in the
    report's JSON. The report passed in is left as it was."""
    artifacts = report.get("artifacts")
    rest = {key: value for key, value in report.items() if key != "artifacts"}
    return rest, artifacts if isinstance(artifacts, list) else []


def record_artifacts(*, submission_id: Any, artifacts: Iterable[Any]) -> int:
    """Replace the submission's files with the report's; returns how many were kept. A file
    that is not what a grader sends (a bad name or type, broken base64, too big) is dropped
    with a warning: the broker is not a place the site trusts blindly."""
    kept = []
    for artifact in artifacts:
        cleaned = _clean(artifact)
        if cleaned is None:
            log.warning("dropping a malformed artifact of submission %s", submission_id)
            continue
        kept.append(SubmissionArtifact(submission_id=submission_id, **cleaned))
    SubmissionArtifact.objects.filter(submission_id=submission_id).delete()
    unique = {artifact.name: artifact for artifact in kept}  # the last of a repeated name wins
    SubmissionArtifact.objects.bulk_create(unique.values())
    return len(unique)


def _clean(artifact: Any) -> dict[str, Any] | None:
    if not isinstance(artifact, dict):
        return None
    name, content_type = artifact.get("name"), artifact.get("content_type")
    encoded = artifact.get("data_base64")
    if not (isinstance(name, str) and NAME.match(name)) or content_type not in CONTENT_TYPES:
        return None
    if not isinstance(encoded, str) or len(encoded) > (MAX_BYTES // 3 + 1) * 4:
        return None
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not data or len(data) > MAX_BYTES:
        return None
    return {"name": name, "content_type": content_type, "data": data, "size": len(data)}


@require_GET
def download(request: HttpRequest, pk: Any, name: str) -> HttpResponse:
    """One file of a submission, as an attachment (never shown inline)."""
    artifact = get_object_or_404(
        SubmissionArtifact.objects.select_related("submission__lab"), submission_id=pk, name=name
    )
    response = HttpResponse(bytes(artifact.data), content_type=artifact.content_type)
    response["Content-Disposition"] = f'attachment; filename="{artifact.filename}"'
    response["Content-Length"] = str(artifact.size)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    return response
