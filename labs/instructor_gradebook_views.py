"""Instructor pages that read a whole cohort: the gradebook (and its live fragment), the
analytics charts and the CSV exports. Access rules: labs/instructor_access.py."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.text import slugify
from django_htmx.http import HttpResponseStopPolling

from labs import export
from labs.analytics import build_analytics
from labs.gradebook import SORTS, STATUS_FILTERS, build_gradebook
from labs.instructor_access import POLL_SECONDS, instructor_required, taught_cohort
from labs.models import Cohort, Lab


@instructor_required
def gradebook(request: HttpRequest, pk: int) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    filters = {key: request.GET.get(key, "") for key in ("lab", "status", "sort")}
    book = build_gradebook(cohort, **filters)
    ctx = {
        "cohort": cohort,
        "book": book,
        "filters": filters,
        "all_labs": Lab.objects.filter(active=True),
        "status_filters": STATUS_FILTERS,
        "sorts": SORTS,
        "poll_seconds": POLL_SECONDS,
    }
    if request.htmx:
        response = render(request, "labs/instructor/gradebook.html#table", ctx)
        if not book.active:
            return HttpResponseStopPolling(response.content)
        return response
    return render(request, "labs/instructor/gradebook.html", ctx)


@instructor_required
def analytics(request: HttpRequest, pk: int) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    ctx = {"cohort": cohort, "analytics": build_analytics(cohort, now=timezone.now())}
    return render(request, "labs/instructor/analytics.html", ctx)


def _csv(body: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _export_name(cohort: Cohort, what: str) -> str:
    today = timezone.now().date().isoformat()
    return f"{slugify(cohort.name) or 'cohort'}-{what}-{today}.csv"


@instructor_required
def gradebook_csv(request: HttpRequest, pk: int) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    return _csv(export.gradebook_csv(build_gradebook(cohort)), _export_name(cohort, "gradebook"))


@instructor_required
def lab_csv(request: HttpRequest, pk: int, slug: str) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    lab = get_object_or_404(Lab, slug=slug)
    base_url = request.build_absolute_uri("/").rstrip("/")
    body = export.lab_detail_csv(cohort, lab, base_url=base_url)
    return _csv(body, _export_name(cohort, lab.slug))
