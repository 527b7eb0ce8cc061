"""Workflows that span models (STYLE.md: services only for those): submitting a lab, and an
instructor overriding a grade.

Every refusal is a SubmissionRefused carrying the HTTP status and a message written for the
learner; nothing is stored or queued when a submission is refused. An override refused is an
OverrideRefused with a message for the instructor; nothing is written then either.
"""

from __future__ import annotations

import re
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from labs import tasks
from labs.models import (
    OVERRIDE_STATUSES,
    AuditEntry,
    Cohort,
    GradeOverride,
    Lab,
    Status,
    Submission,
)

LEARNER_KEY = re.compile(r"^[0-9a-f]{32}$")


class SubmissionRefused(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str = "bad_request",
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after


def max_upload_bytes(lab: Lab | None = None) -> int:
    cap = settings.SUBMISSION_MAX_BYTES
    if lab is not None:
        cap = min(cap, int(lab.limits.get("max_notebook_bytes", cap)))
    return cap


def check_rate_limits(*, learner_key: str, client_ip: str | None) -> None:
    hour = timedelta(hours=1)
    mine = Submission.objects.for_learner(learner_key)
    if mine.active().count() >= settings.SUBMISSIONS_ACTIVE_PER_LEARNER:
        raise SubmissionRefused(
            f"You already have {settings.SUBMISSIONS_ACTIVE_PER_LEARNER} submissions waiting "
            "or running. Try again when one has finished.",
            status=429,
            code="too_many",
            retry_after=30,
        )
    if mine.since(hour).count() >= settings.SUBMISSIONS_PER_LEARNER_PER_HOUR:
        raise SubmissionRefused(
            f"You have sent {settings.SUBMISSIONS_PER_LEARNER_PER_HOUR} submissions in the "
            "last hour, the most allowed. Try again later.",
            status=429,
            code="too_many",
            retry_after=_retry_after(mine, hour),
        )
    if client_ip:
        from_ip = Submission.objects.filter(client_ip=client_ip)
        if from_ip.since(hour).count() >= settings.SUBMISSIONS_PER_IP_PER_HOUR:
            raise SubmissionRefused(
                "Too many submissions from your network in the last hour. Try again later.",
                status=429,
                code="too_many",
                retry_after=_retry_after(from_ip, hour),
            )


def _retry_after(queryset, window: timedelta) -> int:
    """Seconds until the oldest submission in the window leaves it."""
    oldest = queryset.since(window).order_by("created").values_list("created", flat=True).first()
    if oldest is None:
        return 60
    return max(1, int((oldest + window - timezone.now()).total_seconds()) + 1)


def submit_lab(
    *,
    lab: Lab,
    learner_key: str,
    notebook: bytes,
    filename: str = "",
    client_ip: str | None = None,
    device_class: str | None = None,
) -> Submission:
    learner_key = (learner_key or "").strip().lower()
    if not LEARNER_KEY.match(learner_key):
        raise SubmissionRefused(
            "The learner key is missing or malformed: it is the 32 hexadecimal characters "
            "your browser keeps with your progress (see the lab page).",
            code="bad_learner",
        )
    device_class = device_class or settings.GRADING_DEVICE_CLASS
    if device_class not in lab.device_classes:
        raise SubmissionRefused(
            f"This lab is graded on {', '.join(lab.device_classes)}, not {device_class}.",
            code="bad_device_class",
        )
    cap = max_upload_bytes(lab)
    if len(notebook) > cap:
        raise SubmissionRefused(
            f"The notebook is {len(notebook):,} bytes; the limit is {cap:,} bytes. "
            "Clear the outputs (Kernel > Restart & Clear Output) and try again.",
            status=413,
            code="too_large",
        )
    check_rate_limits(learner_key=learner_key, client_ip=client_ip)
    try:
        tasks.check_notebook(
            notebook, max_bytes=cap, max_cells=int(lab.limits.get("max_cells", 500))
        )
    except tasks.BadNotebook as exc:
        raise SubmissionRefused(str(exc), code="bad_notebook") from exc

    with transaction.atomic():
        submission = Submission.objects.create(
            lab=lab,
            learner_key=learner_key,
            client_ip=client_ip,
            device_class=device_class,
            notebook=notebook.decode("utf-8"),
            notebook_name=filename[:255],
        )
        # Only once the row is committed may a worker see the job.
        transaction.on_commit(lambda: tasks.dispatch(str(submission.pk)))
    return submission


class OverrideRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# The override form's choice that removes the override (the grader's verdict counts again).
GRADER_VERDICT = "grader"


def override_grade(
    *, submission: Submission, status: str, reason: str, by, cohort: Cohort | None
) -> AuditEntry:
    """Set (or, with status=GRADER_VERDICT, remove) the instructor's final status for a
    submission, and record it. The grader's report and status stay as they are."""
    reason = (reason or "").strip()
    if not reason:
        raise OverrideRefused("Give a reason: it is kept in the audit trail with the change.")
    if status != GRADER_VERDICT and status not in OVERRIDE_STATUSES:
        raise OverrideRefused("Choose passed, failed or rejected.")
    with transaction.atomic():
        # Lock the row: two instructors overriding at once each see the other's result. (The
        # override is read after: PostgreSQL locks nothing on the nullable side of a join.)
        submission = Submission.objects.select_for_update().get(pk=submission.pk)
        if not submission.is_final:
            raise OverrideRefused("This submission is still being graded; override it after.")
        current = submission.grade_override
        before = submission.final_status
        if status == GRADER_VERDICT:
            if current is None:
                raise OverrideRefused("There is no override to remove.")
            current.delete()
            action, after = AuditEntry.Action.REMOVE, submission.status
        else:
            if status == before:
                raise OverrideRefused(f"Its status is already {Status(status).label.lower()}.")
            GradeOverride.objects.update_or_create(
                submission=submission,
                defaults={
                    "status": status,
                    "graded_status": submission.status,
                    "reason": reason,
                    "by": by,
                    "at": timezone.now(),
                },
            )
            action, after = AuditEntry.Action.OVERRIDE, status
        return AuditEntry.objects.create(
            actor=by,
            actor_name=by.get_username(),
            submission=submission,
            cohort=cohort,
            action=action,
            field="status",
            before=before,
            after=after,
            reason=reason,
        )
