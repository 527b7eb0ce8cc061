from __future__ import annotations

from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from curriculum.models import Goal, Phase, Project, Roadmap, SlugAlias


def _roadmap() -> Roadmap | None:
    return Roadmap.objects.first()


def _alias_map() -> dict[str, str]:
    return dict(SlugAlias.objects.values_list("old_slug", "new_slug"))


def _redirect_alias(kind: str, slug: str) -> HttpResponse | None:
    """Old links keep working: a renamed phase or project redirects to its new slug."""
    alias = SlugAlias.objects.filter(old_slug=slug).first()
    if alias is None:
        return None
    return redirect(kind, slug=alias.new_slug, permanent=True)


def overview(request: HttpRequest) -> HttpResponse:
    phases = list(
        Phase.objects.prefetch_related(
            Prefetch("goals", queryset=Goal.objects.order_by("position")), "milestone"
        )
    )
    total_weeks = 0
    for phase in phases:
        phase.start_week = total_weeks + 1
        total_weeks += phase.weeks
        phase.end_week = total_weeks
    groups = {phase.slug: phase.trackable_slugs() for phase in phases}
    groups["overall"] = [slug for phase in phases for slug in groups[phase.slug]]
    groups["projects"] = list(Project.objects.values_list("slug", flat=True))
    ctx = {
        "roadmap": _roadmap(),
        "phases": phases,
        "total_weeks": total_weeks,
        # Months as the source counts them: ~4 weeks a month, rounded.
        "total_months": round(total_weeks / 4),
        "progress_groups": groups,
        "aliases": _alias_map(),
    }
    return render(request, "curriculum/overview.html", ctx)


def phase_detail(request: HttpRequest, slug: str) -> HttpResponse:
    phase = Phase.objects.filter(slug=slug).prefetch_related("goals", "resources").first()
    if phase is None:
        return _redirect_alias("phase", slug) or get_object_or_404(Phase, slug=slug)
    ctx = {
        "phase": phase,
        "previous": Phase.objects.filter(number__lt=phase.number).last(),
        "next": Phase.objects.filter(number__gt=phase.number).first(),
        "projects": phase.projects.all(),
        "labs": phase.milestone.labs.filter(active=True) if hasattr(phase, "milestone") else [],
        "progress_groups": {phase.slug: phase.trackable_slugs()},
        "aliases": _alias_map(),
    }
    return render(request, "curriculum/phase.html", ctx)


def project_list(request: HttpRequest) -> HttpResponse:
    difficulty = request.GET.get("difficulty", "")
    if difficulty not in Project.Difficulty.values:
        difficulty = ""
    projects = Project.objects.select_related("phase")
    if difficulty:
        projects = projects.filter(difficulty=difficulty)
    ctx = {
        "projects": projects,
        "difficulty": difficulty,
        "difficulties": Project.Difficulty.choices,
        "progress_groups": {"projects": list(Project.objects.values_list("slug", flat=True))},
        "aliases": _alias_map(),
    }
    template = "curriculum/projects.html"
    if request.htmx:
        template += "#project-list"
    return render(request, template, ctx)


def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = Project.objects.select_related("phase").filter(slug=slug).first()
    if project is None:
        return _redirect_alias("project", slug) or get_object_or_404(Project, slug=slug)
    ctx = {
        "project": project,
        "progress_groups": {},
        "aliases": _alias_map(),
    }
    return render(request, "curriculum/project.html", ctx)
