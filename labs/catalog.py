"""Mirror the lab folders (notebooks/<lab>/lab.toml) into Lab rows, idempotently."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from curriculum.models import Milestone
from labs.models import Lab


class LabCatalogError(ValueError):
    pass


def resolve_milestone(name: str) -> Milestone:
    """A lab names its milestone by the milestone's slug or by its phase's slug."""
    milestone = (
        Milestone.objects.filter(slug=name).first()
        or Milestone.objects.filter(phase__slug=name).first()
    )
    if milestone is None:
        raise LabCatalogError(
            f"milestone {name!r} is neither a milestone nor a phase slug of the roadmap "
            "(load the curriculum first)"
        )
    return milestone


def sync_labs(specs: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"created": 0, "updated": 0, "unchanged": 0, "hidden": 0}
    with transaction.atomic():
        for position, spec in enumerate(sorted(specs, key=lambda s: s["slug"])):
            values = {
                "title": spec["title"],
                "summary": spec["summary"],
                "milestone": resolve_milestone(spec["milestone"]),
                "device_classes": spec["device_classes"],
                "criteria": spec["criteria"],
                # Optional in lab.toml: a lab without [[rubric]] is graded by measurement alone.
                "rubric": spec.get("rubric", []),
                "limits": spec["limits"],
                "starter_filename": spec["starter"],
                "starter_notebook": spec["starter_notebook"],
                "position": position,
                "active": True,
            }
            lab = Lab.objects.filter(slug=spec["slug"]).first()
            if lab is None:
                Lab.objects.create(slug=spec["slug"], **values)
                counts["created"] += 1
                continue
            dirty = [k for k, v in values.items() if getattr(lab, k) != v]
            if dirty:
                for key in dirty:
                    setattr(lab, key, values[key])
                lab.save(update_fields=dirty)
                counts["updated"] += 1
            else:
                counts["unchanged"] += 1
        gone = Lab.objects.filter(active=True).exclude(slug__in=[s["slug"] for s in specs])
        counts["hidden"] = gone.update(active=False)
    return counts
