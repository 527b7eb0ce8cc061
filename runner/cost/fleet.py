"""A fleet plan: which GPU, how many per replica, what precision, how large a batch, how
requests are routed, how many replicas at peak and how the fleet scales over the day.

Plans arrive as plain JSON data (a learner's `plan_fleet` returns one). `parse_plan` checks
one field by field against the workload and the catalogue, and raises PlanError with a
message that names what is wrong; `daily_cost` prices a valid plan over the workload's day.

    {"gpu": "H100-SXM-80GB", "gpus_per_replica": 1, "precision": "bf16", "max_batch": 256,
     "routing": "least_loaded", "replicas": 40,
     "autoscaling": {"min_replicas": 8, "target_rps_per_replica": 250.0}}

Autoscaling: in each hour h the fleet runs clamp(ceil(rate(h) / target_rps_per_replica),
min_replicas, replicas) replicas. The target may not exceed the per-replica load at peak
(peak_rps / replicas): an off-peak replica must never run hotter than the peak that was
simulated, or the SLOs shown at peak would say nothing about the rest of the day.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.cost.catalogue import Catalogue, CatalogueError
from runner.cost.metrics import cost_summary
from runner.cost.roofline import Deployment, DoesNotFit
from runner.cost.traffic import HOURS, Workload

PLAN_FIELDS = (
    "gpu",
    "gpus_per_replica",
    "precision",
    "max_batch",
    "routing",
    "replicas",
    "autoscaling",
)
AUTOSCALING_FIELDS = ("min_replicas", "target_rps_per_replica")
MAX_REPLICAS = 100_000
MAX_BATCH = 4096
# Fields a plan might carry to smuggle in its own figures: the grader's catalogue decides.
_FIGURES = ("price", "memory", "bandwidth", "flops", "spec", "cost", "catalogue")


class PlanError(ValueError):
    """A plan that cannot be simulated; str() says which field and why, for the learner."""


@dataclass(frozen=True)
class FleetPlan:
    gpu: str
    gpus_per_replica: int
    precision: str
    max_batch: int
    routing: str
    replicas: int
    min_replicas: int
    target_rps_per_replica: float

    def to_plain(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "gpus_per_replica": self.gpus_per_replica,
            "precision": self.precision,
            "max_batch": self.max_batch,
            "routing": self.routing,
            "replicas": self.replicas,
            "autoscaling": {
                "min_replicas": self.min_replicas,
                "target_rps_per_replica": self.target_rps_per_replica,
            },
        }

    def deployment(self, workload: Workload, catalogue: Catalogue) -> Deployment:
        return Deployment(
            model=workload.model,
            gpu=catalogue.gpu(self.gpu),
            precision=self.precision,
            gpus_per_replica=self.gpus_per_replica,
            assumptions=catalogue.assumptions,
        )


def parse_plan(raw: Any, *, workload: Workload, catalogue: Catalogue) -> FleetPlan:
    """A FleetPlan from plain data, or PlanError naming the first problem found."""
    if not isinstance(raw, Mapping):
        raise PlanError(f"a plan must be a dict with the fields {', '.join(PLAN_FIELDS)}; "
                        f"got {type(raw).__name__}")  # fmt: skip
    missing = [name for name in PLAN_FIELDS if name not in raw]
    if missing:
        raise PlanError(f"the plan lacks the field(s) {', '.join(missing)}")
    unknown = sorted(str(name) for name in raw if name not in PLAN_FIELDS)
    if unknown:
        figures = [n for n in unknown if any(word in n.lower() for word in _FIGURES)]
        why = (
            " A plan names a GPU from the catalogue; its memory, speed and price are the "
            "grader's, whatever the plan says."
            if figures
            else ""
        )
        raise PlanError(f"unknown field(s) in the plan: {', '.join(unknown)}.{why}")

    name = raw["gpu"]
    if not isinstance(name, str):
        raise PlanError("gpu must be the name of a catalogue entry (a string)")
    try:
        gpu = catalogue.gpu(name)
    except CatalogueError as exc:
        raise PlanError(str(exc)) from None
    gpus = _whole(raw["gpus_per_replica"], "gpus_per_replica", low=1)
    if gpus > gpu.max_gpus_per_replica:
        raise PlanError(
            f"gpus_per_replica is {gpus}, but {gpu.name} allows at most "
            f"{gpu.max_gpus_per_replica} per replica (GPUs of one replica must share an NVLink "
            "node)"
        )
    precision = raw["precision"]
    if precision not in workload.precisions:
        raise PlanError(
            f"precision {precision!r} is not one this workload accepts "
            f"({', '.join(workload.precisions)})"
        )
    if not gpu.supports(precision):
        raise PlanError(f"{gpu.name} has no {precision} figure in the catalogue (no {precision} "
                        "tensor cores, or not measured)")  # fmt: skip
    max_batch = _whole(raw["max_batch"], "max_batch", low=1, high=MAX_BATCH)
    routing = raw["routing"]
    if routing not in workload.routing:
        raise PlanError(f"routing {routing!r} is not one of {', '.join(workload.routing)}")
    replicas = _whole(raw["replicas"], "replicas", low=1, high=MAX_REPLICAS)
    autoscaling = raw["autoscaling"]
    if not isinstance(autoscaling, Mapping):
        raise PlanError(f"autoscaling must be a dict with {', '.join(AUTOSCALING_FIELDS)}")
    missing = [n for n in AUTOSCALING_FIELDS if n not in autoscaling]
    unknown = sorted(str(n) for n in autoscaling if n not in AUTOSCALING_FIELDS)
    if missing or unknown:
        raise PlanError(
            "autoscaling must have exactly the fields "
            f"{', '.join(AUTOSCALING_FIELDS)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    min_replicas = _whole(
        autoscaling["min_replicas"], "autoscaling.min_replicas", low=1, high=replicas
    )
    target = autoscaling["target_rps_per_replica"]
    if isinstance(target, bool) or not isinstance(target, int | float) or not target > 0:
        raise PlanError("autoscaling.target_rps_per_replica must be a positive number")
    if not math.isfinite(target):
        raise PlanError("autoscaling.target_rps_per_replica must be finite")
    at_peak = workload.peak_rps / replicas
    if target > at_peak * (1 + 1e-9):
        raise PlanError(
            f"autoscaling.target_rps_per_replica is {target:g}, above the load per replica at "
            f"peak ({workload.peak_rps:g} / {replicas} = {at_peak:.4g}): off-peak replicas "
            "would run hotter than the peak you planned for"
        )
    plan = FleetPlan(
        gpu=gpu.name,
        gpus_per_replica=gpus,
        precision=precision,
        max_batch=max_batch,
        routing=routing,
        replicas=replicas,
        min_replicas=min_replicas,
        target_rps_per_replica=float(target),
    )
    try:
        plan.deployment(workload, catalogue).check_fits(
            tokens_per_request=workload.max_tokens_per_request
        )
    except DoesNotFit as exc:
        raise PlanError(f"the model does not fit: {exc}") from None
    return plan


def _whole(value: Any, name: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise PlanError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if value < low:
        raise PlanError(f"{name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise PlanError(f"{name} must be at most {high}, got {value}")
    return value


def replicas_by_hour(plan: FleetPlan, workload: Workload) -> list[int]:
    """How many replicas the autoscaler runs in each hour of the day."""
    return [
        min(
            plan.replicas,
            max(
                plan.min_replicas, math.ceil(workload.rate_at_hour(h) / plan.target_rps_per_replica)
            ),
        )
        for h in range(HOURS)
    ]


def daily_cost(plan: FleetPlan, workload: Workload, catalogue: Catalogue) -> dict[str, Any]:
    """The plan's day: GPU-hours and dollars (hour by hour, autoscaled), requests and output
    tokens served, cost per 1K output tokens, requests per dollar."""
    price = catalogue.gpu(plan.gpu).price_per_hour
    hourly = replicas_by_hour(plan, workload)
    requests = sum(workload.rate_at_hour(h) * 3600 for h in range(HOURS))
    summary = cost_summary(
        gpu_hours=sum(hourly) * plan.gpus_per_replica,
        price_per_gpu_hour=price,
        requests=requests,
        output_tokens=requests * workload.output_tokens.mean,
    )
    return {**summary, "replicas_by_hour": hourly, "requests": requests}
