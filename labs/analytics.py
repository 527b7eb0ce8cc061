"""A cohort's analytics: the numbers behind the four charts on its analytics page.

Every figure but the last is about best attempts, chosen exactly as the gradebook chooses
them (gradebook.Cell: an override counts), one per current member and active lab:

1. per lab, how many members' best attempt passed, failed, errored, timed out, was rejected,
   or who have no finished attempt ("not attempted", which includes one still running);
2. per lab and criterion, the share of best attempts that passed it among those whose report
   evaluated it;
3. per performance lab (one with a speedup criterion), the best attempts' speedups in
   log-spaced bins, with the criterion's thresholds;
4. the members' submissions per day over the last 30 days (every attempt, not only the best).

The charts themselves are drawn by labs/charts.py from these plain numbers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.db.models import Count
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.safestring import SafeString

from labs import charts
from labs.gradebook import SYMBOLS, Cell
from labs.models import ACTIVE, Cohort, Lab, Status, Submission

NOT_ATTEMPTED = "none"
# The distribution's categories, in the order the bars stack them.
OUTCOMES = [
    (Status.PASSED.value, f"{SYMBOLS[Status.PASSED]} Passed"),
    (Status.FAILED.value, f"{SYMBOLS[Status.FAILED]} Failed"),
    (Status.ERROR.value, f"{SYMBOLS[Status.ERROR]} Error"),
    (Status.TIMEOUT.value, f"{SYMBOLS[Status.TIMEOUT]} Timed out"),
    (Status.REJECTED.value, f"{SYMBOLS[Status.REJECTED]} Rejected"),
    (NOT_ATTEMPTED, "— Not attempted"),
]
DAYS = 30
SPEEDUP_METRICS = ("speedup",)


@dataclass
class LabOutcomes:
    lab: Lab
    counts: dict[str, int]

    @property
    def segments(self) -> list[tuple[str, str, int]]:
        return [(key, word, self.counts[key]) for key, word in OUTCOMES]


@dataclass
class CriterionRate:
    name: str
    passed: int
    evaluated: int

    @property
    def percent(self) -> float | None:
        return 100 * self.passed / self.evaluated if self.evaluated else None


@dataclass
class LabCriteria:
    lab: Lab
    criteria: list[CriterionRate]

    @property
    def chart(self) -> SafeString:
        return charts.percent_bars(
            [(rate.name, rate.percent) for rate in self.criteria],
            summary=f"{self.lab.title}: pass rate per criterion, "
            + ", ".join(f"{r.name} {r.passed} of {r.evaluated}" for r in self.criteria),
        )


@dataclass
class LabSpeedups:
    lab: Lab
    speedups: list[float]
    thresholds: list[tuple[str, float]]  # (device class, threshold)
    edges: list[float] = field(default_factory=charts.log_bins)

    @property
    def counts(self) -> list[int]:
        return charts.bin_counts(self.speedups, self.edges)

    @property
    def bins(self) -> list[tuple[str, int]]:
        """Each bin's range as text, with its count (the first and last are open)."""
        last = len(self.edges) - 2
        rows = []
        for i, count in enumerate(self.counts):
            low, high = self.edges[i], self.edges[i + 1]
            if i == 0:
                text = f"below {high:g}×"
            elif i == last:
                text = f"{low:g}× and above"
            else:
                text = f"{low:g}× to {high:g}×"
            rows.append((text, count))
        return rows

    @property
    def chart(self) -> SafeString:
        markers = [(value, f"{device} ≥ {value:g}×") for device, value in self.thresholds]
        return charts.histogram(
            self.counts,
            self.edges,
            markers=markers,
            summary=f"{self.lab.title}: best-attempt speedups of {len(self.speedups)} "
            "member(s), " + ", ".join(f"{text}: {n}" for text, n in self.bins),
        )


@dataclass
class Analytics:
    cohort: Cohort
    members: int
    outcomes: list[LabOutcomes]
    criteria: list[LabCriteria]
    speedups: list[LabSpeedups]
    days: list[tuple[date, int]]

    @property
    def outcomes_chart(self) -> SafeString:
        return charts.stacked_bars(
            [(row.lab.title, row.segments) for row in self.outcomes],
            summary=f"Best attempt per member, per lab, of {self.members} member(s): "
            + "; ".join(
                f"{row.lab.title}: " + ", ".join(f"{word} {n}" for _, word, n in row.segments)
                for row in self.outcomes
            ),
        )

    @property
    def days_chart(self) -> SafeString:
        counts = [n for _, n in self.days]
        return charts.column_chart(
            [(day.strftime("%b %d"), n) for day, n in self.days],
            summary=f"Submissions per day over the last {len(self.days)} days: "
            f"{sum(counts)} in all, at most {max(counts, default=0)} a day",
        )


def best_attempts(cohort: Cohort, labs: list[Lab]) -> dict[tuple[str, int], Submission | None]:
    """(learner key, lab id) -> the best attempt, for every current member and lab. The
    report's criteria come out of its JSON in the query; the report itself (it holds the
    executed notebook) is never loaded."""
    attempts: dict[tuple[str, int], list[Submission]] = defaultdict(list)
    queryset = (
        cohort.submissions()
        .filter(lab__in=labs)
        .light()
        .annotate(report_criteria=KeyTransform("criteria", "report"))
    )
    for submission in queryset:
        attempts[(submission.learner_key, submission.lab_id)].append(submission)
    keys = list(cohort.memberships.current().values_list("learner_key", flat=True))
    best = {}
    for key in keys:
        for lab in labs:
            finished = [s for s in attempts[(key, lab.pk)] if s.final_status not in ACTIVE]
            best[(key, lab.pk)] = Cell(lab, finished).best
    return best


def _criteria_of(submission: Submission) -> list[dict]:
    criteria = getattr(submission, "report_criteria", None)
    return [c for c in criteria or [] if isinstance(c, dict)]


def _criterion_rates(lab: Lab, attempts: list[Submission]) -> list[CriterionRate]:
    # The lab's own criteria first, in its order, then any other name a report gave.
    rates = {str(c.get("name")): CriterionRate(str(c.get("name")), 0, 0) for c in lab.criteria}
    for submission in attempts:
        for criterion in _criteria_of(submission):
            if not criterion.get("evaluated", True):
                continue
            name = str(criterion.get("name") or "unnamed")
            rate = rates.setdefault(name, CriterionRate(name, 0, 0))
            rate.evaluated += 1
            rate.passed += bool(criterion.get("passed"))
    return list(rates.values())


def _speedup_thresholds(lab: Lab) -> list[tuple[str, float]] | None:
    """(device class, threshold) of the lab's speedup criterion; None if it has none."""
    for criterion in lab.criteria:
        if str(criterion.get("metric", "")).startswith(SPEEDUP_METRICS):
            return sorted(
                (str(device), float(value))
                for device, value in (criterion.get("threshold") or {}).items()
                if isinstance(value, int | float)
            )
    return None


def submissions_per_day(
    cohort: Cohort, *, now: datetime, days: int = DAYS
) -> list[tuple[date, int]]:
    """The members' submissions per day (in TIME_ZONE, as TruncDate counts them), the last
    `days` days up to today, zeros kept."""
    today = timezone.localdate(now)
    first = today - timedelta(days=days - 1)
    counted = dict(
        cohort.submissions()
        .filter(created__date__gte=first)
        .annotate(day=TruncDate("created"))
        .values("day")
        .annotate(n=Count("pk"))
        .values_list("day", "n")
    )
    return [
        (first + timedelta(days=i), counted.get(first + timedelta(days=i), 0)) for i in range(days)
    ]


def build_analytics(cohort: Cohort, *, now: datetime) -> Analytics:
    labs = list(Lab.objects.filter(active=True))
    best = best_attempts(cohort, labs)
    members = len({key for key, _ in best}) if labs else cohort.memberships.current().count()
    outcomes, criteria, speedups = [], [], []
    for lab in labs:
        attempts = [s for (_, lab_id), s in best.items() if lab_id == lab.pk and s is not None]
        counts = {key: 0 for key, _ in OUTCOMES}
        for submission in attempts:
            counts[submission.final_status] = counts.get(submission.final_status, 0) + 1
        counts[NOT_ATTEMPTED] = members - len(attempts)
        outcomes.append(LabOutcomes(lab, counts))
        criteria.append(LabCriteria(lab, _criterion_rates(lab, attempts)))
        thresholds = _speedup_thresholds(lab)
        if thresholds is not None:
            values = [s.speedup for s in attempts if s.speedup is not None and s.speedup > 0]
            speedups.append(LabSpeedups(lab, sorted(values), thresholds))
    return Analytics(
        cohort=cohort,
        members=members,
        outcomes=outcomes,
        criteria=criteria,
        speedups=speedups,
        days=submissions_per_day(cohort, now=now),
    )
