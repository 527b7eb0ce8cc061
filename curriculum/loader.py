"""Load the roadmap data file into the database, idempotently.

`load_curriculum(path)` reads the YAML file, validates all of it before touching the
database, then makes the tables match it inside one transaction: new items are created,
changed items updated, items no longer in the file deleted, unchanged items left alone.
Running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.db import models, transaction

from curriculum.models import Goal, Milestone, Phase, Project, Resource, Roadmap, SlugAlias

DIFFICULTIES = {choice.value for choice in Project.Difficulty}


class CurriculumError(ValueError):
    """The data file is not a valid roadmap; the message lists every problem found."""


@dataclass
class LoadResult:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def __str__(self) -> str:
        return (
            f"{self.created} created, {self.updated} updated, {self.deleted} deleted, "
            f"{self.unchanged} unchanged"
        )


def read_curriculum(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CurriculumError(f"{path}: not valid YAML: {exc}") from exc
    validate_curriculum(data)
    return data


def validate_curriculum(data: Any) -> None:
    problems: list[str] = []
    if not isinstance(data, dict):
        raise CurriculumError("The roadmap file must be a mapping with title, phases, projects.")
    for key in ("title", "phases", "projects"):
        if key not in data:
            problems.append(f"missing top-level key '{key}'")
    seen: dict[str, str] = {}

    def claim(slug: Any, where: str) -> None:
        if not isinstance(slug, str) or not slug:
            problems.append(f"{where}: missing slug")
        elif slug in seen:
            problems.append(f"{where}: slug '{slug}' already used by {seen[slug]}")
        else:
            seen[slug] = where

    phase_slugs = set()
    for i, phase in enumerate(data.get("phases") or [], start=1):
        where = f"phase {i}"
        claim(phase.get("slug"), where)
        phase_slugs.add(phase.get("slug"))
        if not phase.get("title"):
            problems.append(f"{where}: missing title")
        weeks = phase.get("weeks")
        if not isinstance(weeks, int) or weeks <= 0:
            problems.append(f"{where}: weeks must be a positive whole number")
        for j, goal in enumerate(phase.get("goals") or [], start=1):
            claim(goal.get("slug"), f"{where} goal {j}")
            if not goal.get("text"):
                problems.append(f"{where} goal {j}: missing text")
        for j, resource in enumerate(phase.get("resources") or [], start=1):
            claim(resource.get("slug"), f"{where} resource {j}")
            if not resource.get("title"):
                problems.append(f"{where} resource {j}: missing title")
            for link in resource.get("links") or []:
                url = link.get("url", "") if isinstance(link, dict) else ""
                if not url.startswith("https://"):
                    problems.append(f"{where} resource {j}: link {link!r} needs an https URL")
        milestone = phase.get("milestone")
        if not isinstance(milestone, dict):
            problems.append(f"{where}: missing milestone")
        else:
            claim(milestone.get("slug"), f"{where} milestone")
            if not milestone.get("text"):
                problems.append(f"{where} milestone: missing text")
    for i, project in enumerate(data.get("projects") or [], start=1):
        where = f"project {i}"
        claim(project.get("slug"), where)
        if project.get("difficulty") not in DIFFICULTIES:
            problems.append(f"{where}: difficulty must be one of {sorted(DIFFICULTIES)}")
        if project.get("phase") is not None and project.get("phase") not in phase_slugs:
            problems.append(f"{where}: unknown phase '{project.get('phase')}'")
        for key in ("title", "description"):
            if not project.get(key):
                problems.append(f"{where}: missing {key}")
    for old, new in (data.get("aliases") or {}).items():
        if old in seen:
            problems.append(f"alias '{old}' is still the slug of {seen[old]}")
        if new not in seen:
            problems.append(f"alias '{old}' points to '{new}', which is not a current slug")
    if problems:
        raise CurriculumError("Invalid roadmap file:\n- " + "\n- ".join(problems))


def load_curriculum(path: Path) -> LoadResult:
    data = read_curriculum(path)
    result = LoadResult()
    with transaction.atomic():
        _sync(data, result)
    return result


def _upsert(
    model: type[models.Model], result: LoadResult, *, lookup: dict[str, Any], **values: Any
) -> models.Model:
    """Create or update one row, saving only if something differs."""
    obj = model.objects.filter(**lookup).first()
    if obj is None:
        obj = model.objects.create(**lookup, **values)
        result.created += 1
        result.changes.append(f"created {model.__name__} {lookup}")
        return obj
    dirty = [name for name, value in values.items() if getattr(obj, name) != value]
    if dirty:
        for name in dirty:
            setattr(obj, name, values[name])
        obj.save(update_fields=dirty)
        result.updated += 1
        result.changes.append(f"updated {model.__name__} {lookup}: {', '.join(dirty)}")
    else:
        result.unchanged += 1
    return obj


def _delete_missing(
    model: type[models.Model], key: str, keep: set[str], result: LoadResult
) -> None:
    stale = model.objects.exclude(**{f"{key}__in": keep})
    for value in stale.values_list(key, flat=True):
        result.changes.append(f"deleted {model.__name__} {value}")
    result.deleted += stale.count()
    stale.delete()


def _sync(data: dict[str, Any], result: LoadResult) -> None:
    phases = data["phases"]
    projects = data["projects"]
    aliases: dict[str, str] = data.get("aliases") or {}

    _upsert(
        Roadmap,
        result,
        lookup={"pk": 1},
        title=data["title"],
        summary=(data.get("summary") or "").strip(),
    )

    # Deletions first, so a slug or phase number that moved can be reused below.
    _delete_missing(Phase, "slug", {p["slug"] for p in phases}, result)
    _delete_missing(Goal, "slug", {g["slug"] for p in phases for g in p.get("goals") or []}, result)
    _delete_missing(
        Resource, "slug", {r["slug"] for p in phases for r in p.get("resources") or []}, result
    )
    _delete_missing(Milestone, "slug", {p["milestone"]["slug"] for p in phases}, result)
    _delete_missing(Project, "slug", {p["slug"] for p in projects}, result)
    _delete_missing(SlugAlias, "old_slug", set(aliases), result)

    # Phase numbers are unique; park any that would collide while phases are reordered.
    wanted = {p["slug"]: n for n, p in enumerate(phases, start=1)}
    if any(
        wanted.get(slug) != number for slug, number in Phase.objects.values_list("slug", "number")
    ):
        Phase.objects.update(number=models.F("number") + 1000)

    phase_rows: dict[str, Phase] = {}
    for number, phase in enumerate(phases, start=1):
        row = _upsert(
            Phase,
            result,
            lookup={"slug": phase["slug"]},
            number=number,
            title=phase["title"],
            weeks=phase["weeks"],
        )
        phase_rows[phase["slug"]] = row
        for position, goal in enumerate(phase.get("goals") or [], start=1):
            _upsert(
                Goal,
                result,
                lookup={"slug": goal["slug"]},
                phase=row,
                position=position,
                text=goal["text"].strip(),
            )
        for position, resource in enumerate(phase.get("resources") or [], start=1):
            _upsert(
                Resource,
                result,
                lookup={"slug": resource["slug"]},
                phase=row,
                position=position,
                title=resource["title"],
                links=[{"label": x["label"], "url": x["url"]} for x in resource.get("links") or []],
            )
        milestone = phase["milestone"]
        # A phase has one milestone: if its slug changed, the old row was deleted above.
        _upsert(
            Milestone,
            result,
            lookup={"slug": milestone["slug"]},
            phase=row,
            text=milestone["text"].strip(),
        )

    for position, project in enumerate(projects, start=1):
        _upsert(
            Project,
            result,
            lookup={"slug": project["slug"]},
            position=position,
            title=project["title"],
            difficulty=project["difficulty"],
            description=" ".join(project["description"].split()),
            phase=phase_rows.get(project.get("phase")),
        )
    for old, new in aliases.items():
        _upsert(SlugAlias, result, lookup={"old_slug": old}, new_slug=new)
