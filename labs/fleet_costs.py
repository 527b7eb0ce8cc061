"""What the grading fleet costs: an editable price per GPU-hour for each GPU model, and the
figures the fleet page (labs/fleet.py) derives from it and from the workers' samples.

A price is entered by staff (on the fleet page, or in the admin) per GPU model *as NVML names
it* ("NVIDIA H100 80GB HBM3"), since that is what heartbeats carry. Where none is stored, no
cost is shown: the cost model's hardware catalogue (runner/cost/catalogue.toml) only offers
its assumed price as a suggestion in the form, and nothing is stored until staff saves it.

Definitions (docs/gpu-worker.md repeats them for operators), over a window of WINDOW:

- observed GPU time: the summed sample intervals of every GPU (WorkerSample.interval_s), busy
  or idle. A GPU held by an alive worker costs money whether or not a job runs, so the fleet's
  cost is observed GPU-hours x price. Time while a worker is lost or stopped is not observed
  (interval 0) and costs nothing here.
- busy GPU time: the part of it while the worker ran a job (jobs_running > 0).
- jobs: submissions finished (any final status) in the window by one of those GPUs' workers;
  graded: the jobs that got a verdict from the grader (passed or failed).
- cost per graded submission including idle = cost / graded; busy GPU cost per graded
  submission = busy cost / graded. Their difference is the idle time each graded submission
  carries. Samples do not say which submission ran during them, so a submission's own run is
  priced as the average busy cost, not one by one; GPU time of jobs that ended in an error, a
  timeout or a rejection is carried by the graded ones.
- requests per dollar = graded / cost.
- cost per 1K tokens served: the serving lab's grader reports what the learner's engine served
  in its measured runs (report.metrics.tokens_served: output tokens, and the seconds those runs
  took on the job's GPU, which a timing job has alone). Over the serving submissions finished
  in the window on these GPUs: the runs' GPU time x the price of the GPU each ran on (the
  report's environment.gpu.name), over the tokens, x 1000. It is the cost of serving itself:
  the rest of a grading job (the sandbox starting, the reference, the static baseline) is in
  the cost per graded submission.

Imported by labs/models.py, which registers GpuPrice with the app.
"""

from __future__ import annotations

import logging
import math
import tomllib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q, Sum
from django.utils import timezone

from labs.models import FINAL, Status, Submission
from labs.workers import Worker, WorkerSample

log = logging.getLogger(__name__)

WINDOW = timedelta(hours=24)
# The cost model's hardware catalogue (runner/cost/), read as data for price suggestions.
CATALOGUE_FILE = Path(__file__).resolve().parent.parent / "runner" / "cost" / "catalogue.toml"
UNKNOWN_MODEL = "unknown GPU model"
GRADED = (Status.PASSED, Status.FAILED)
MAX_USD_PER_HOUR = Decimal("10000")


class GpuPrice(models.Model):
    """What one GPU-hour of this model costs the operator, in US dollars."""

    gpu_model = models.CharField(
        max_length=100, unique=True, help_text='As NVML reports it, e.g. "NVIDIA H100 80GB HBM3".'
    )
    usd_per_hour = models.DecimalField(
        max_digits=9,
        decimal_places=4,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(MAX_USD_PER_HOUR)],
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["gpu_model"]
        verbose_name = "GPU price"

    def __str__(self) -> str:
        return f"{self.gpu_model}: ${self.usd_per_hour}/GPU-hour"


class GpuPriceForm(forms.Form):
    gpu_model = forms.CharField(max_length=100, strip=True)
    usd_per_hour = forms.DecimalField(
        min_value=Decimal(0), max_value=MAX_USD_PER_HOUR, max_digits=9, decimal_places=4
    )

    def clean_gpu_model(self) -> str:
        name = self.cleaned_data["gpu_model"]
        if any(ord(c) < 32 for c in name):
            raise forms.ValidationError("A GPU model name is one line of text.")
        return name


def save_price(*, gpu_model: str, usd_per_hour: Decimal, by: Any, now: datetime) -> GpuPrice:
    price, _ = GpuPrice.objects.update_or_create(
        gpu_model=gpu_model,
        defaults={"usd_per_hour": usd_per_hour, "updated_by": by, "updated_at": now},
    )
    return price


def catalogue_prices(path: Path | None = None) -> dict[str, Decimal]:
    """The catalogue's assumed $/GPU-hour per NVML name, for the form's suggestion only.

    The file belongs to runner/cost/ and is read here as data, not through runner/ code: a
    missing or unreadable catalogue just means no suggestion."""
    path = path or CATALOGUE_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        log.info("no catalogue prices to suggest (%s): %s", path, exc)
        return {}
    prices: dict[str, Decimal] = {}
    entries = data.get("gpu") if isinstance(data.get("gpu"), list) else []
    for entry in entries:
        price = entry.get("price_per_hour") if isinstance(entry, dict) else None
        names = entry.get("nvml_names") if isinstance(entry, dict) else None
        if isinstance(price, bool) or not isinstance(price, int | float):
            continue
        if not math.isfinite(price) or price < 0:
            continue
        for name in names if isinstance(names, list) else []:
            if isinstance(name, str) and name:
                prices.setdefault(name, Decimal(str(price)))  # the first entry wins
    return prices


# --- Figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelUsage:
    """GPU time of one GPU model over the window, in seconds."""

    gpu_model: str
    gpus: int
    observed_s: float
    busy_s: float


@dataclass(frozen=True)
class ModelCost:
    usage: ModelUsage
    usd_per_hour: Decimal | None

    @property
    def observed_hours(self) -> float:
        return self.usage.observed_s / 3600

    @property
    def busy_hours(self) -> float:
        return self.usage.busy_s / 3600

    @property
    def cost_usd(self) -> float | None:
        return None if self.usd_per_hour is None else self.observed_hours * float(self.usd_per_hour)

    @property
    def busy_cost_usd(self) -> float | None:
        return None if self.usd_per_hour is None else self.busy_hours * float(self.usd_per_hour)


@dataclass(frozen=True)
class ServingCosts:
    """What learners' engines served in the serving lab's measured runs over the window, and
    what that GPU time cost."""

    submissions: int
    output_tokens: int
    seconds: float
    cost_usd: float | None  # None when a GPU model that served has no price
    unpriced: tuple[str, ...] = ()

    @property
    def per_1k_tokens_usd(self) -> float | None:
        return cost_per_1k_tokens(cost_usd=self.cost_usd, tokens_served=self.output_tokens)


@dataclass(frozen=True)
class FleetCosts:
    window_hours: float
    models: list[ModelCost]
    jobs: int
    graded: int
    serving: ServingCosts = ServingCosts(submissions=0, output_tokens=0, seconds=0.0, cost_usd=0.0)

    @property
    def unpriced(self) -> list[str]:
        return [m.usage.gpu_model for m in self.models if m.usd_per_hour is None]

    @property
    def cost_usd(self) -> float | None:
        """The fleet's cost over the window; None when a GPU model that ran has no price (a
        sum without it would be a figure too low)."""
        if self.unpriced:
            return None
        return sum(m.cost_usd or 0.0 for m in self.models)

    @property
    def busy_cost_usd(self) -> float | None:
        if self.unpriced:
            return None
        return sum(m.busy_cost_usd or 0.0 for m in self.models)

    @property
    def jobs_per_hour(self) -> float:
        return self.jobs / self.window_hours

    @property
    def cost_per_graded_usd(self) -> float | None:
        """Idle included: all the GPU time paid for, over the graded submissions."""
        return _ratio(self.cost_usd, self.graded)

    @property
    def busy_cost_per_graded_usd(self) -> float | None:
        """The GPU time while jobs ran, over the graded submissions."""
        return _ratio(self.busy_cost_usd, self.graded)

    @property
    def graded_per_usd(self) -> float | None:
        cost = self.cost_usd
        return None if cost is None or cost <= 0 else self.graded / cost


def _ratio(cost: float | None, count: int) -> float | None:
    return None if cost is None or count <= 0 else cost / count


def cost_per_1k_tokens(*, cost_usd: float | None, tokens_served: int) -> float | None:
    """US dollars per 1,000 tokens served, for a serving lab to feed with its own token count
    and the cost of the GPUs that served them. None when either is unknown or zero."""
    if cost_usd is None or tokens_served <= 0:
        return None
    return cost_usd / tokens_served * 1000


def serving_costs(finished: Any, prices: dict[str, Decimal]) -> ServingCosts:
    """The serving figures of `finished` (submissions of GPU workers in the window): those
    whose report says their engine served tokens (runner/graders/serving.py)."""
    rows = finished.filter(report__metrics__has_key="tokens_served").values_list(
        "report__metrics__tokens_served", "report__environment__gpu__name"
    )
    submissions, tokens, seconds, cost = 0, 0, 0.0, 0.0
    unpriced: set[str] = set()
    for served, gpu_name in rows:
        count, took = _served(served)
        if count <= 0:
            continue  # an engine that failed before serving anything
        model = gpu_name if isinstance(gpu_name, str) and gpu_name else UNKNOWN_MODEL
        submissions += 1
        tokens += count
        seconds += took
        price = prices.get(model)
        if price is None:
            unpriced.add(model)
        else:
            cost += took / 3600 * float(price)
    return ServingCosts(
        submissions=submissions,
        output_tokens=tokens,
        seconds=seconds,
        cost_usd=None if unpriced else cost,
        unpriced=tuple(sorted(unpriced)),
    )


def _served(value: Any) -> tuple[int, float]:
    """(output tokens, seconds) from a report's tokens_served; (0, 0.0) when malformed (a
    report is a worker's data: never trusted to be well formed)."""
    if not isinstance(value, dict):
        return 0, 0.0
    tokens, seconds = value.get("output_tokens"), value.get("seconds")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        return 0, 0.0
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return 0, 0.0
    if not math.isfinite(seconds) or seconds < 0:
        return 0, 0.0
    return tokens, float(seconds)


def gpu_usage(*, since: datetime) -> tuple[list[ModelUsage], list[str]]:
    """Observed and busy GPU time per GPU model since `since`, and the names of the workers
    those GPUs belong to. A sample does not carry the GPU's name: it is the one the worker's
    last heartbeat gives for that index (a worker is pinned to its GPU for life)."""
    rows = list(
        WorkerSample.objects.filter(at__gte=since, gpu_index__isnull=False)
        .values("worker_id", "gpu_index")
        .annotate(total=Sum("interval_s"), busy=Sum("interval_s", filter=Q(jobs_running__gt=0)))
    )
    workers = Worker.objects.in_bulk({row["worker_id"] for row in rows})
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for row in rows:
        worker = workers[row["worker_id"]]
        name = next(
            (g.get("name") for g in worker.gpus if g.get("index") == row["gpu_index"]), None
        )
        entry = totals[name or UNKNOWN_MODEL]
        entry[0] += 1
        entry[1] += row["total"] or 0.0
        entry[2] += row["busy"] or 0.0
    usage = [
        ModelUsage(gpu_model=name, gpus=int(gpus), observed_s=observed, busy_s=busy)
        for name, (gpus, observed, busy) in sorted(totals.items())
    ]
    return usage, sorted(worker.name for worker in workers.values())


def fleet_costs(*, now: datetime, window: timedelta = WINDOW) -> FleetCosts:
    since = now - window
    usage, worker_names = gpu_usage(since=since)
    prices = dict(GpuPrice.objects.values_list("gpu_model", "usd_per_hour"))
    finished = Submission.objects.filter(
        status__in=FINAL, finished__gte=since, finished__lte=now, worker__in=worker_names
    )
    return FleetCosts(
        window_hours=window.total_seconds() / 3600,
        models=[ModelCost(usage=u, usd_per_hour=prices.get(u.gpu_model)) for u in usage],
        jobs=finished.count(),
        graded=finished.filter(status__in=GRADED).count(),
        serving=serving_costs(finished, prices),
    )


def price_rows(*, seen_models: list[str]) -> list[dict[str, Any]]:
    """One row per GPU model in the fleet or with a stored price: the price (or None), and
    the catalogue's assumed price as the form's suggestion where none is stored."""
    stored = {price.gpu_model: price for price in GpuPrice.objects.select_related("updated_by")}
    suggestions = catalogue_prices()
    rows = []
    for name in sorted(set(seen_models) | set(stored)):
        price = stored.get(name)
        suggestion = None if price else suggestions.get(name)
        value = price.usd_per_hour if price else suggestion
        rows.append(
            {
                "gpu_model": name,
                "price": price,
                "price_text": usd(float(price.usd_per_hour)) if price else None,
                "suggestion": suggestion,
                # What the form's field holds: the stored price, else the suggestion.
                "value": "" if value is None else f"{value.normalize():f}",
            }
        )
    return rows


def usd(amount: float | None) -> str:
    """Dollars to show: cents from $0.10 up, three significant digits below ($0.0123)."""
    if amount is None:
        return "—"
    if amount >= 0.1 or amount == 0:
        return f"${amount:,.2f}"
    # Three significant digits, never in exponent notation ($0.0000694, not $6.94e-05).
    return f"${amount:.{2 - math.floor(math.log10(amount))}f}"


# --- As the fleet page shows them ---------------------------------------------------------


def costs_context(*, now: datetime) -> dict[str, Any]:
    """The cost figures as the page shows them: dollars as text, and where a figure cannot
    be had, why (never a made-up number)."""
    costs = fleet_costs(now=now)
    unpriced = costs.unpriced
    no_cost = ("no price set for " + ", ".join(unpriced)) if unpriced else ""
    return {
        "window_hours": round(costs.window_hours),
        "models": [
            {
                "name": m.usage.gpu_model,
                "gpus": m.usage.gpus,
                "observed_hours": m.observed_hours,
                "busy_hours": m.busy_hours,
                "price": None if m.usd_per_hour is None else usd(float(m.usd_per_hour)),
                "cost": usd(m.cost_usd),
                "busy_cost": usd(m.busy_cost_usd),
            }
            for m in costs.models
        ],
        "unpriced": unpriced,
        "jobs": costs.jobs,
        "graded": costs.graded,
        "jobs_per_hour": costs.jobs_per_hour,
        "cost": _or_none(usd, costs.cost_usd),
        "busy_cost": _or_none(usd, costs.busy_cost_usd),
        "per_graded": _or_none(usd, costs.cost_per_graded_usd),
        "busy_per_graded": _or_none(usd, costs.busy_cost_per_graded_usd),
        "graded_per_usd": _or_none(lambda x: f"{x:.3g}", costs.graded_per_usd),
        "why_no_cost": no_cost,
        "why_no_ratio": no_cost
        or ("no graded submission in the window" if not costs.graded else "no GPU time observed"),
        **serving_context(costs.serving),
    }


def serving_context(serving: ServingCosts) -> dict[str, Any]:
    if not serving.submissions:
        why = "no serving-lab submission served tokens on these GPUs in the window"
    elif serving.unpriced:
        why = "no price set for " + ", ".join(serving.unpriced)
    else:
        why = ""
    return {
        "per_1k_tokens": _or_none(usd, serving.per_1k_tokens_usd),
        "why_no_per_1k_tokens": why,
        "serving_submissions": serving.submissions,
        "tokens_served": serving.output_tokens,
        "serving_seconds": serving.seconds,
    }


def _or_none(show: Callable[[float], str], value: float | None) -> str | None:
    return None if value is None else show(value)


def prices_context(*, now: datetime) -> dict[str, Any]:
    seen = {
        gpu.get("name") or UNKNOWN_MODEL
        for worker in Worker.objects.filter(last_seen__gte=now - WINDOW)
        for gpu in worker.gpus
    }
    seen.discard(UNKNOWN_MODEL)  # no price can be set for a name nobody knows
    return {"price_rows": price_rows(seen_models=sorted(seen))}
