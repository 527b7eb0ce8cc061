"""Workflows that span models (STYLE.md: services only for those): submitting a lab; an
instructor overriding a grade, regrading, and writing and releasing feedback.

Rubric scores have their own workflow in labs/rubric.py (score_rubric_item).

Every refusal is a SubmissionRefused carrying the HTTP status and a message written for the
learner; nothing is stored or queued when a submission is refused. An override or a regrade
refused is an OverrideRefused or a RegradeRefused with a message for the instructor; nothing
is written then either.
"""

from __future__ import annotations

import re
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from labs import tasks
from labs.models import (
    FINAL,
    OVERRIDE_STATUSES,
    AuditEntry,
    Cohort,
    CommentTemplate,
    Feedback,
    GradeOverride,
    Lab,
    Regrade,
    RegradeBatch,
    RubricScore,
    Status,
    Submission,
    SubmissionQuerySet,
)
from labs.regrades import REPORTS_KEPT

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
    # Runs an instructor's regrade started are not the learner's to wait for.
    if (
        mine.active().filter(regrades__isnull=True).count()
        >= settings.SUBMISSIONS_ACTIVE_PER_LEARNER
    ):
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


# --- Regrades ----------------------------------------------------------------------------


class RegradeRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _regrade(
    submission: Submission, *, by, cohort: Cohort, batch: RegradeBatch | None, reason: str
) -> Regrade | None:
    """Send one submission back to the queue; None when it is queued or running (the UPDATE
    is conditional on the status and attempt read here, so the report kept as history is the
    one the regrade replaces, and two regrades at once send it once)."""
    reset = Submission.objects.filter(
        pk=submission.pk, attempt=submission.attempt, status=submission.status, status__in=FINAL
    ).update(
        status=Status.QUEUED,
        attempt=F("attempt") + 1,
        stage="",
        progress={},
        message="",
        report=None,
        log_tail="",
        dispatched_at=None,
        heartbeat_at=None,
        worker="",
        started=None,
        finished=None,
    )
    if not reset:
        return None
    regrade = Regrade.objects.create(
        submission=submission,
        batch=batch,
        by=by,
        attempt=submission.attempt + 1,
        previous_status=submission.status,
        previous_speedup=submission.speedup,
        previous_report=submission.report,
        previous_finished=submission.finished,
    )
    stale = submission.regrades.order_by("-at", "-id").values_list("pk", flat=True)[REPORTS_KEPT:]
    Regrade.objects.filter(pk__in=list(stale)).update(previous_report=None)
    AuditEntry.objects.create(
        actor=by,
        actor_name=by.get_username(),
        submission=submission,
        cohort=cohort,
        action=AuditEntry.Action.REGRADE,
        field="attempt",
        before=f"{submission.attempt} ({submission.status})",
        after=f"{submission.attempt + 1} (queued)",
        reason=reason or "Regrade requested.",
    )
    transaction.on_commit(lambda: tasks.dispatch(str(submission.pk)))
    return regrade


def regrade_submission(*, submission: Submission, by, cohort: Cohort, reason: str = "") -> Regrade:
    """Run the same notebook through the same pipeline again. An override stays (it lives
    beside the submission); the grader's previous report is kept on the Regrade row."""
    with transaction.atomic():
        current = Submission.objects.select_related("lab").get(pk=submission.pk)
        regrade = _regrade(current, by=by, cohort=cohort, batch=None, reason=reason.strip())
        if regrade is None:
            raise RegradeRefused("This submission is queued or running; regrade it once it ends.")
    return regrade


def regrade_lab(*, cohort: Cohort, lab: Lab, by, reason: str = "") -> RegradeBatch:
    """Regrade every finished submission of the lab by the cohort's current members."""
    with transaction.atomic():
        batch = RegradeBatch.objects.create(cohort=cohort, lab=lab, by=by)
        finished = cohort.submissions().filter(lab=lab, status__in=FINAL).defer("notebook")
        for submission in finished.select_related("lab"):
            if _regrade(submission, by=by, cohort=cohort, batch=batch, reason=reason.strip()):
                batch.count += 1
        if not batch.count:
            transaction.set_rollback(True)
            raise RegradeRefused(f"No finished submission of {lab.title} to regrade.")
        batch.save(update_fields=["count"])
    return batch


# --- Feedback ----------------------------------------------------------------------------


def save_feedback(
    *,
    submission: Submission,
    comment: str,
    by,
    save_as_template: bool = False,
    cohort: Cohort | None = None,
) -> Feedback:
    """Write (or replace) the instructor's comment. Released feedback shows the new text at
    once: release is per submission, not per version of the comment, so changing a comment the
    learner could already read is an audit entry with the text before and after."""
    comment = comment.strip()
    with transaction.atomic():
        previous = Feedback.objects.select_for_update().filter(submission=submission).first()
        feedback, _ = Feedback.objects.update_or_create(
            submission=submission, defaults={"comment": comment, "by": by, "at": timezone.now()}
        )
        if previous is not None and previous.released and previous.comment != comment:
            AuditEntry.objects.create(
                actor=by,
                actor_name=by.get_username(),
                submission=submission,
                cohort=cohort,
                action=AuditEntry.Action.COMMENT,
                field="comment",
                before=previous.comment or "(none)",
                after=comment or "(none)",
                reason="Edited after release: the learner sees the new text.",
            )
        if save_as_template and comment:
            CommentTemplate.objects.get_or_create(
                lab=submission.lab, rubric_item="", text=comment, defaults={"by": by}
            )
    return feedback


def release_feedback(*, submissions: SubmissionQuerySet, by, cohort: Cohort) -> int:
    """Let the learners see the comments, rubric scores and overrides of these submissions.
    Those with none of them, or already released, are left alone. Returns how many were
    released."""
    released = 0
    now = timezone.now()
    with transaction.atomic():
        scored = set(
            RubricScore.objects.filter(submission__in=submissions).values_list(
                "submission_id", flat=True
            )
        )
        for submission in submissions.light():
            feedback = Feedback.objects.filter(submission=submission).first()
            if feedback is not None and feedback.released:
                continue
            has_comment = feedback is not None and bool(feedback.comment)
            overridden = submission.grade_override is not None
            if not (overridden or has_comment or submission.pk in scored):
                continue
            Feedback.objects.update_or_create(
                submission=submission,
                defaults={"released_at": now, "released_by": by},
                create_defaults={"by": by, "released_at": now, "released_by": by},
            )
            AuditEntry.objects.create(
                actor=by,
                actor_name=by.get_username(),
                submission=submission,
                cohort=cohort,
                action=AuditEntry.Action.RELEASE,
                field="feedback",
                before="not released",
                after="released",
                reason="The learner now sees the comment, rubric scores and any override.",
            )
            released += 1
    return released
