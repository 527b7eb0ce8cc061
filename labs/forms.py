"""Forms for cohorts and instructor actions. Messages are written for the person at the form;
a form that fails keeps what was typed."""

from __future__ import annotations

import unicodedata

from django import forms
from django.contrib.auth import get_user_model

from labs.models import (
    JOIN_CODE_LENGTH,
    OVERRIDE_STATUSES,
    Cohort,
    CommentTemplate,
    Feedback,
    Status,
    normalise_join_code,
)
from labs.services import GRADER_VERDICT, LEARNER_KEY

DISPLAY_NAME_MAX = 60
REASON_MAX = 2000
COMMENT_MAX = 4000


class JoinCohortForm(forms.Form):
    code = forms.CharField(label="Join code", max_length=40)
    display_name = forms.CharField(
        label="Your name as your instructors will see it",
        max_length=DISPLAY_NAME_MAX,
        error_messages={
            "required": "Enter a display name.",
            "max_length": f"Keep the display name to {DISPLAY_NAME_MAX} characters or fewer.",
        },
    )
    # Filled from localStorage by static/js/labs.js, as on the lab page's upload form.
    learner = forms.CharField(required=False, widget=forms.HiddenInput)

    def clean_code(self) -> str:
        code = normalise_join_code(self.cleaned_data["code"])
        cohort = Cohort.objects.filter(join_code=code).first() if code else None
        if cohort is None:
            raise forms.ValidationError(
                f"No cohort has the join code “{code[: JOIN_CODE_LENGTH * 2]}”. Check it with "
                f"your instructor: codes are {JOIN_CODE_LENGTH} letters and digits, never "
                "0, O, 1 or I."
            )
        self.cohort = cohort
        return code

    def clean_display_name(self) -> str:
        name = " ".join(self.cleaned_data["display_name"].split())
        if not name:
            raise forms.ValidationError("Enter a display name.")
        if any(unicodedata.category(ch).startswith("C") for ch in name):
            raise forms.ValidationError("Use letters, digits, spaces and punctuation only.")
        return name

    def clean_learner(self) -> str:
        key = self.cleaned_data["learner"].strip().lower()
        if not LEARNER_KEY.match(key):
            raise forms.ValidationError(
                "Your browser did not send its learner key (it lives with your progress in "
                "this browser, and this page needs JavaScript to read it). Reload the page and "
                "join again; nothing was lost."
            )
        return key


class CohortForm(forms.ModelForm):
    class Meta:
        model = Cohort
        fields = ["name"]
        labels = {"name": "New cohort name"}


class AddInstructorForm(forms.Form):
    username = forms.CharField(label="Username of a staff account", max_length=150)

    def clean_username(self):
        username = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None or not user.is_staff:
            raise forms.ValidationError(
                f"There is no active staff account “{username}” (create one with "
                "`python manage.py create_instructor`)."
            )
        self.user = user
        return username


class OverrideForm(forms.Form):
    status = forms.ChoiceField(label="Final status")
    reason = forms.CharField(
        label="Reason (required; kept in the audit trail)",
        max_length=REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": "Give a reason: it is kept in the audit trail."},
    )

    def __init__(self, *args, submission, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        choices = [(s.value, s.label) for s in map(Status, OVERRIDE_STATUSES)]
        if submission.grade_override is not None:
            graded = submission.get_status_display().lower()
            choices.append((GRADER_VERDICT, f"Remove the override (the grader said {graded})"))
        self.fields["status"].choices = choices

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Give a reason: it is kept in the audit trail.")
        return reason


class FeedbackForm(forms.Form):
    """The instructor's comment; a saved comment of the lab, chosen, is added to it."""

    comment = forms.CharField(
        label="Comment for the learner", max_length=COMMENT_MAX, required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
    )  # fmt: skip
    template = forms.ModelChoiceField(
        label="Add a saved comment", queryset=CommentTemplate.objects.none(), required=False,
        empty_label="(none)",
    )  # fmt: skip
    save_as_template = forms.BooleanField(
        label="Save this comment for other submissions of this lab", required=False
    )

    def __init__(self, *args, submission, **kwargs) -> None:
        feedback = Feedback.objects.filter(submission=submission).first()
        kwargs.setdefault("initial", {"comment": feedback.comment if feedback else ""})
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = CommentTemplate.objects.filter(
            lab=submission.lab_id, rubric_item=""
        )

    def clean(self):
        data = super().clean()
        template = data.get("template")
        comment = (data.get("comment") or "").strip()
        if template is not None:
            comment = f"{comment}\n\n{template.text}" if comment else template.text
        if len(comment) > COMMENT_MAX:
            raise forms.ValidationError(f"Keep the comment to {COMMENT_MAX:,} characters.")
        data["comment"] = comment
        return data


class RubricScoreForm(forms.Form):
    """Points (0 to the item's maximum) and a comment for one rubric item; a saved comment of
    the item, chosen, is added to the comment. Empty points and comment remove the score.
    Prefixed with the item's name, so the review page can hold one per item."""

    points = forms.IntegerField(label="Points", required=False)
    comment = forms.CharField(
        label="Comment for the learner", max_length=COMMENT_MAX, required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
    )  # fmt: skip
    template = forms.ModelChoiceField(
        label="Add a saved comment", queryset=CommentTemplate.objects.none(), required=False,
        empty_label="(none)",
    )  # fmt: skip
    save_as_template = forms.BooleanField(
        label="Save this comment for this item on other submissions", required=False
    )

    def __init__(self, *args, item: dict, submission, score=None, **kwargs) -> None:
        kwargs.setdefault("prefix", item["name"])
        kwargs.setdefault(
            "initial",
            {"points": score.points if score else None, "comment": score.comment if score else ""},
        )
        super().__init__(*args, **kwargs)
        self.item = item
        self.maximum = int(item["points"])
        self.fields["points"].error_messages["invalid"] = (
            f"Enter the points as a whole number from 0 to {self.maximum}."
        )
        self.fields["template"].queryset = CommentTemplate.objects.filter(
            lab=submission.lab_id, rubric_item=item["name"]
        )

    def clean_points(self) -> int | None:
        points = self.cleaned_data["points"]
        if points is not None and not 0 <= points <= self.maximum:
            raise forms.ValidationError(
                f"Give between 0 and {self.maximum} points for “{self.item['title']}”."
            )
        return points

    def clean(self):
        data = super().clean()
        template = data.get("template")
        comment = (data.get("comment") or "").strip()
        if template is not None:
            comment = f"{comment}\n\n{template.text}" if comment else template.text
        if len(comment) > COMMENT_MAX:
            raise forms.ValidationError(f"Keep the comment to {COMMENT_MAX:,} characters.")
        if "points" in data and data["points"] is None and comment:
            self.add_error("points", f"Give points (0 to {self.maximum}) with the comment.")
        data["comment"] = comment
        return data
