"""Lab specs: one `notebooks/<lab>/lab.toml` per lab, parsed into frozen dataclasses.

Criteria are data (metric, comparator, threshold per device class) so that the web side can
show the criteria table from the same file the grader evaluates against. A lab may also declare
a rubric (`[[rubric]]`): items an instructor scores by hand, for written answers that no grader
can measure (a design defence, an explanation of a profiler trace). The runner never reads the
rubric; it is parsed here so that a bad item fails `load_labs` with the same clear message as a
bad criterion.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runner.routing import GpuRequirements, parse_requirements
from runner.schema import COMPARATORS, DEVICE_CLASSES

NOTEBOOKS_ENV = "INFERENCE_ROADMAP_NOTEBOOKS"
SPEC_FILENAME = "lab.toml"

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GRADERS = Path(__file__).resolve().parent / "graders"

_TOP_KEYS = {
    "requirements",
    "slug",
    "title",
    "summary",
    "milestone",
    "device_classes",
    "grader",
    "starter",
    "reference",
    "solution",
    "limits",
    "criteria",
    "options",
    "rubric",
}
_LIMIT_KEYS = (
    "cell_timeout_s",
    "total_timeout_s",
    "max_notebook_bytes",
    "max_cells",
    "max_output_bytes",
)
# Sandbox limits, optional in lab.toml: memory of each sandbox (the notebook, the candidate,
# the baseline), its processes and threads, and the size of each of its private tmpfs
# (/job, /tmp, /dev/shm). See docs/security.md.
_SANDBOX_LIMIT_DEFAULTS = {
    "memory_bytes": 4 << 30,
    "max_processes": 512,
    "disk_bytes": 256 << 20,
}
_CRITERION_KEYS = {
    "name",
    "metric",
    "comparator",
    "unit",
    "explanation",
    "hint",
    "threshold",
}
_RUBRIC_KEYS = {"name", "title", "points", "description", "answer_tag"}
# Rubric item names become CSV columns (`rubric_<name>_points`) and audit fields: short
# identifiers keep both readable.
_RUBRIC_NAME_MAX = 32
# A notebook cell tag: what Jupyter's tag editor accepts, without spaces.
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class LabSpecError(ValueError):
    """A lab.toml that cannot be used; the message names the file and the field."""


def notebooks_root() -> Path:
    """The folder holding one sub-folder per lab: $INFERENCE_ROADMAP_NOTEBOOKS or repo/notebooks.

    A GPU node that installs runner/ as a package has no repo next to it, so it sets the env.
    """
    configured = os.environ.get(NOTEBOOKS_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "notebooks"


@dataclass(frozen=True)
class LabLimits:
    cell_timeout_s: float
    total_timeout_s: float
    max_notebook_bytes: int
    max_cells: int
    max_output_bytes: int
    memory_bytes: int = _SANDBOX_LIMIT_DEFAULTS["memory_bytes"]
    max_processes: int = _SANDBOX_LIMIT_DEFAULTS["max_processes"]
    disk_bytes: int = _SANDBOX_LIMIT_DEFAULTS["disk_bytes"]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*_LIMIT_KEYS, *_SANDBOX_LIMIT_DEFAULTS)}


@dataclass(frozen=True)
class CriterionSpec:
    name: str
    metric: str
    comparator: str
    unit: str
    explanation: str
    hint: str
    thresholds: Mapping[str, float]

    def threshold_for(self, device_class: str) -> float | None:
        """None means the criterion is not evaluated on this device class."""
        return self.thresholds.get(device_class)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metric": self.metric,
            "comparator": self.comparator,
            "unit": self.unit,
            "explanation": self.explanation,
            "hint": self.hint,
            "threshold": dict(self.thresholds),
        }


@dataclass(frozen=True)
class RubricItemSpec:
    """One item an instructor scores by hand: up to `points`, earned as `description` says.
    `answer_tag` names the notebook tag of the markdown cell(s) holding the learner's written
    answer for it ("" when the item is not tied to a cell)."""

    name: str
    title: str
    points: int
    description: str
    answer_tag: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "points": self.points,
            "description": self.description,
            "answer_tag": self.answer_tag,
        }


@dataclass(frozen=True)
class LabSpec:
    slug: str
    title: str
    summary: str
    milestone: str
    device_classes: tuple[str, ...]
    grader: str
    starter: str
    reference: str
    solution: str
    limits: LabLimits
    criteria: tuple[CriterionSpec, ...]
    folder: Path
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # What its GPU jobs need; decides their queue (runner/routing.py).
    requirements: GpuRequirements = field(default_factory=GpuRequirements)
    # Items scored by an instructor (empty: the lab is graded by measurement alone).
    rubric: tuple[RubricItemSpec, ...] = ()

    @property
    def starter_path(self) -> Path:
        return self.folder / self.starter

    @property
    def reference_path(self) -> Path:
        return self.folder / self.reference

    def to_dict(self) -> dict[str, Any]:
        """What the web side may show. The reference filename is left out on purpose: the
        reference solution is never served, and a name it does not have cannot be linked."""
        return {
            "slug": self.slug,
            "title": self.title,
            "summary": self.summary,
            "milestone": self.milestone,
            "device_classes": list(self.device_classes),
            "grader": self.grader,
            "starter": self.starter,
            "solution": self.solution,
            "limits": self.limits.to_dict(),
            "criteria": [c.to_dict() for c in self.criteria],
            "requirements": self.requirements.to_dict(),
            "rubric": [item.to_dict() for item in self.rubric],
        }


def load_lab_spec(path: Path | str) -> LabSpec:
    """Parse one lab.toml (or the lab folder holding it); raise LabSpecError on any defect."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILENAME
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabSpecError(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LabSpecError(f"{path}: not valid TOML ({exc})") from None
    return _Parser(path).lab(raw)


def load_lab_specs(root: Path | str | None = None) -> dict[str, LabSpec]:
    """Every lab under `root` (default notebooks_root()), keyed and sorted by slug."""
    root = Path(root) if root is not None else notebooks_root()
    if not root.is_dir():
        raise LabSpecError(f"{root}: the notebooks folder does not exist")
    specs = {}
    for folder in sorted(root.iterdir()):
        if (folder / SPEC_FILENAME).is_file():
            spec = load_lab_spec(folder)
            specs[spec.slug] = spec
    return specs


class _Parser:
    """Turns the TOML dict into a LabSpec, with every error prefixed by the file name."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, message: str) -> LabSpecError:
        return LabSpecError(f"{self.path}: {message}")

    def lab(self, raw: dict[str, Any]) -> LabSpec:
        unknown = set(raw) - _TOP_KEYS
        if unknown:
            raise self.fail(f"unknown key(s) {sorted(unknown)}")
        slug = self.text(raw, "slug")
        if not _SLUG.match(slug):
            raise self.fail(f"slug {slug!r} must be lowercase letters, digits and dashes")
        if slug != self.path.parent.name:
            raise self.fail(f"slug {slug!r} must equal the folder name {self.path.parent.name!r}")
        device_classes = raw.get("device_classes")
        if (
            not isinstance(device_classes, list)
            or not device_classes
            or any(d not in DEVICE_CLASSES for d in device_classes)
        ):
            raise self.fail(f"device_classes must be a non-empty list drawn from {DEVICE_CLASSES}")
        grader = self.identifier(raw, "grader")
        if not (_GRADERS / f"{grader}.py").is_file():
            raise self.fail(f"grader {grader!r} has no module runner/graders/{grader}.py")
        starter = self.existing_file(raw, "starter")
        reference = self.existing_file(raw, "reference")
        options = raw.get("options", {})
        if not isinstance(options, dict):
            raise self.fail("options must be a table")
        criteria = self.criteria(raw.get("criteria"), tuple(device_classes))
        return LabSpec(
            slug=slug,
            title=self.text(raw, "title"),
            summary=self.text(raw, "summary"),
            milestone=self.text(raw, "milestone"),
            device_classes=tuple(device_classes),
            grader=grader,
            starter=starter,
            reference=reference,
            solution=self.identifier(raw, "solution"),
            limits=self.limits(raw.get("limits")),
            criteria=criteria,
            folder=self.path.parent,
            options=MappingProxyType(options),
            requirements=parse_requirements(raw.get("requirements"), self.fail),
            rubric=self.rubric(raw.get("rubric", [])),
        )

    def text(self, table: Mapping[str, Any], key: str, where: str = "") -> str:
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where}{key} must be a non-empty string")
        return value.strip()

    def identifier(self, table: Mapping[str, Any], key: str) -> str:
        value = self.text(table, key)
        if not _IDENTIFIER.match(value):
            raise self.fail(f"{key} {value!r} must be a Python identifier")
        return value

    def existing_file(self, table: Mapping[str, Any], key: str) -> str:
        name = self.text(table, key)
        if "/" in name or name.startswith(".") or not (self.path.parent / name).is_file():
            raise self.fail(f"{key} {name!r} is not a file in {self.path.parent}")
        return name

    def limits(self, raw: Any) -> LabLimits:
        if not isinstance(raw, dict):
            raise self.fail("[limits] table is missing")
        unknown = set(raw) - set(_LIMIT_KEYS) - set(_SANDBOX_LIMIT_DEFAULTS)
        if unknown:
            raise self.fail(f"unknown key(s) in [limits]: {sorted(unknown)}")
        values = {}
        for key in (*_LIMIT_KEYS, *_SANDBOX_LIMIT_DEFAULTS):
            value = raw.get(key, _SANDBOX_LIMIT_DEFAULTS.get(key))
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise self.fail(f"limits.{key} must be a positive number")
            values[key] = value
        if values["cell_timeout_s"] > values["total_timeout_s"]:
            raise self.fail("limits.cell_timeout_s cannot exceed limits.total_timeout_s")
        return LabLimits(
            cell_timeout_s=float(values["cell_timeout_s"]),
            total_timeout_s=float(values["total_timeout_s"]),
            max_notebook_bytes=int(values["max_notebook_bytes"]),
            max_cells=int(values["max_cells"]),
            max_output_bytes=int(values["max_output_bytes"]),
            **{key: int(values[key]) for key in _SANDBOX_LIMIT_DEFAULTS},
        )

    def criteria(self, raw: Any, device_classes: tuple[str, ...]) -> tuple[CriterionSpec, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail("at least one [[criteria]] table is required")
        seen: set[str] = set()
        criteria = []
        for number, table in enumerate(raw, start=1):
            where = f"criteria #{number}: "
            if not isinstance(table, dict):
                raise self.fail(f"{where}must be a table")
            unknown = set(table) - _CRITERION_KEYS
            if unknown:
                raise self.fail(f"{where}unknown key(s) {sorted(unknown)}")
            name = self.text(table, "name", where)
            if name in seen:
                raise self.fail(f"{where}duplicate criterion name {name!r}")
            seen.add(name)
            comparator = self.text(table, "comparator", where)
            if comparator not in COMPARATORS:
                raise self.fail(f"{where}comparator must be one of {COMPARATORS}")
            criteria.append(
                CriterionSpec(
                    name=name,
                    metric=self.text(table, "metric", where),
                    comparator=comparator,
                    unit=str(table.get("unit", "")),
                    explanation=self.text(table, "explanation", where),
                    hint=self.text(table, "hint", where),
                    thresholds=self.thresholds(table.get("threshold"), device_classes, where),
                )
            )
        return tuple(criteria)

    def thresholds(
        self, raw: Any, device_classes: tuple[str, ...], where: str
    ) -> Mapping[str, float]:
        # An empty table is allowed: the metric is measured and shown, graded nowhere (say why
        # in the criterion's comment and explanation).
        if not isinstance(raw, dict):
            raise self.fail(f"{where}threshold must be a table like {{cpu = 1.0, gpu = 2.0}}")
        for device_class, value in raw.items():
            if device_class not in device_classes:
                raise self.fail(
                    f"{where}threshold for {device_class!r}, which is not in device_classes"
                )
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise self.fail(f"{where}threshold.{device_class} must be a finite number")
        return MappingProxyType({k: float(v) for k, v in raw.items()})

    def rubric(self, raw: Any) -> tuple[RubricItemSpec, ...]:
        """Optional `[[rubric]]` tables, validated like criteria: every defect names the item."""
        if not isinstance(raw, list):
            raise self.fail("rubric must be [[rubric]] tables")
        seen: set[str] = set()
        items = []
        for number, table in enumerate(raw, start=1):
            where = f"rubric #{number}: "
            if not isinstance(table, dict):
                raise self.fail(f"{where}must be a table")
            unknown = set(table) - _RUBRIC_KEYS
            if unknown:
                raise self.fail(f"{where}unknown key(s) {sorted(unknown)}")
            name = self.text(table, "name", where)
            if not _IDENTIFIER.match(name) or len(name) > _RUBRIC_NAME_MAX:
                raise self.fail(
                    f"{where}name {name!r} must be an identifier of at most "
                    f"{_RUBRIC_NAME_MAX} characters"
                )
            if name in seen:
                raise self.fail(f"{where}duplicate rubric item name {name!r}")
            seen.add(name)
            points = table.get("points")
            if isinstance(points, bool) or not isinstance(points, int) or points <= 0:
                raise self.fail(f"{where}points must be a positive whole number (the maximum)")
            answer_tag = table.get("answer_tag", "")
            if not isinstance(answer_tag, str) or (answer_tag and not _TAG.match(answer_tag)):
                raise self.fail(
                    f"{where}answer_tag must be a notebook cell tag (letters, digits, - and _)"
                )
            items.append(
                RubricItemSpec(
                    name=name,
                    title=self.text(table, "title", where),
                    points=points,
                    description=self.text(table, "description", where),
                    answer_tag=answer_tag,
                )
            )
        return tuple(items)
