"""Signed proof that a learner passed a lab, stored by the browser with its progress.

The token names the submission, the milestone and the learner key; the server can check
it (for example when progress is imported) without keeping any session.

A token follows the status the learner is told (Submission.learner_status): the grader's,
until an instructor releases feedback; then an override's. So an override to failed or
rejected stops the token verifying once it is released (and the learner can read why), and a
released override to passed gives one.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing

from labs.models import Status, Submission


def make_token(submission: Submission) -> str | None:
    milestone = submission.lab.milestone
    if submission.learner_status != Status.PASSED or milestone is None:
        return None
    payload = {"s": str(submission.pk), "m": milestone.slug, "k": submission.learner_key}
    return signing.dumps(payload, salt=settings.VERIFICATION_SALT, compress=True)


def read_token(token: str) -> dict | None:
    """The payload of a genuine token whose submission still passes as the learner is told
    (an override counts once released); else None."""
    try:
        payload = signing.loads(token, salt=settings.VERIFICATION_SALT)
    except signing.BadSignature:
        return None
    if not isinstance(payload, dict) or not {"s", "m", "k"} <= payload.keys():
        return None
    submission = (
        Submission.objects.select_related("override", "feedback")
        .filter(pk=payload["s"], learner_key=payload["k"])
        .first()
    )
    passed = submission is not None and submission.learner_status == Status.PASSED
    return payload if passed else None
