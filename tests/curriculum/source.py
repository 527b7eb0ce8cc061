"""A parser for the roadmap's source text (curriculum/source/roadmap-source.txt), used by
the tests to prove that the data file holds every item of the source, word for word."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "curriculum" / "source" / "roadmap-source.txt"


@dataclass
class SourcePhase:
    title: str
    weeks: int = 0
    goals: list[str] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    milestone: str = ""


@dataclass
class SourceProject:
    title: str
    difficulty: str
    description: str


def parse_source(text: str) -> tuple[list[SourcePhase], list[SourceProject]]:
    lines = [line.strip() for line in text.splitlines()]
    projects_at = lines.index("Practice Projects")
    phases: list[SourcePhase] = []
    section = None
    for i, line in enumerate(lines[:projects_at]):
        if line == "-":
            phases.append(SourcePhase(title=lines[i + 1]))
            section = None
        elif match := re.fullmatch(r"(\d+) weeksGoals", line):
            phases[-1].weeks = int(match.group(1))
            section = "goals"
        elif line == "Resources":
            section = "resources"
        elif line.startswith("Milestone") and phases:
            phases[-1].milestone = line.removeprefix("Milestone")
            section = None
        elif line.startswith("- ") and section:
            getattr(phases[-1], section).append(line[2:])
    end = lines.index("Ready to Start Your Journey?")
    body = [line for line in lines[projects_at + 2 : end] if line]
    projects = []
    for title, rest in zip(body[0::2], body[1::2], strict=True):
        match = re.fullmatch(r"(Beginner|Intermediate|Advanced)(.+)", rest)
        assert match, f"unexpected project line: {rest!r}"
        projects.append(SourceProject(title, match.group(1).lower(), match.group(2)))
    return phases, projects


def load_source() -> tuple[list[SourcePhase], list[SourceProject]]:
    return parse_source(SOURCE.read_text(encoding="utf-8"))
