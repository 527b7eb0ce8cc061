"""The fleet's costs: each figure from fixed samples and prices, no figure without a price,
the catalogue's price only suggested, and prices editable by staff alone."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from labs import fleet_costs
from labs.fleet_costs import (
    FleetCosts,
    GpuPrice,
    ModelCost,
    ModelUsage,
    catalogue_prices,
    cost_per_1k_tokens,
    usd,
)
from labs.models import Status, Submission, Worker, WorkerSample
from labs.tasks import record_heartbeat
from tests.labs.conftest import LEARNER
from tests.labs.test_workers import heartbeat

pytestmark = pytest.mark.django_db

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"


@pytest.fixture
def staff(client):
    client.force_login(User.objects.create_user("operator", password="pw", is_staff=True))
    return client


@pytest.fixture
def no_catalogue(monkeypatch, tmp_path):
    monkeypatch.setattr(fleet_costs, "CATALOGUE_FILE", tmp_path / "missing.toml")


def gpu_worker(name: str, model: str) -> Worker:
    beat = heartbeat(name)
    beat["gpus"][0]["name"] = model
    record_heartbeat(beat)
    WorkerSample.objects.filter(worker__name=name).delete()  # only the samples a test makes
    return Worker.objects.get(name=name)


def quarter_hours(worker: Worker, *, busy: int, idle: int) -> None:
    """Samples of 900 s each within the last day: `busy` with a job running, `idle` without."""
    now = timezone.now()
    WorkerSample.objects.bulk_create(
        WorkerSample(
            worker=worker,
            at=now - timedelta(minutes=15 * i + 1),
            gpu_index=0,
            gpu_utilization=90 if i < busy else 0,
            jobs_running=1 if i < busy else 0,
            interval_s=900,
        )
        for i in range(busy + idle)
    )


def finish(lab, worker: str, status: str, *, hours_ago: float = 1) -> Submission:
    return Submission.objects.create(
        lab=lab,
        learner_key=LEARNER,
        notebook="{}",
        device_class="gpu",
        status=status,
        worker=worker,
        finished=timezone.now() - timedelta(hours=hours_ago),
    )


@pytest.fixture
def a_day_of_grading(lab, no_catalogue):
    """Two hours of an H100 (one busy), one hour of an A100 (half busy); ten GPU jobs
    finished in the last day, eight of them graded; two that do not count."""
    quarter_hours(gpu_worker("gpu0@node1", H100), busy=4, idle=4)
    quarter_hours(gpu_worker("gpu0@node2", A100), busy=2, idle=2)
    record_heartbeat(heartbeat("cpu@node3") | {"gpus": [], "device_class": "cpu"})
    for status in [Status.PASSED] * 5 + [Status.FAILED] * 3:
        finish(lab, "gpu0@node1", status)
    finish(lab, "gpu0@node2", Status.ERROR)
    finish(lab, "gpu0@node2", Status.TIMEOUT)
    finish(lab, "cpu@node3", Status.PASSED)  # not on a GPU
    finish(lab, "gpu0@node1", Status.PASSED, hours_ago=25)  # before the window
    Submission.objects.create(
        lab=lab, learner_key=LEARNER, notebook="{}", status=Status.RUNNING, worker="gpu0@node1"
    )


def set_price(model: str, usd_per_hour: str) -> None:
    GpuPrice.objects.create(gpu_model=model, usd_per_hour=Decimal(usd_per_hour))


# --- The figures ------------------------------------------------------------------------


def test_each_figure_from_fixed_usage_and_prices():
    costs = FleetCosts(
        window_hours=24,
        models=[
            ModelCost(ModelUsage(H100, 1, observed_s=7200, busy_s=3600), Decimal("2.50")),
            ModelCost(ModelUsage(A100, 1, observed_s=3600, busy_s=1800), Decimal("1.50")),
        ],
        jobs=10,
        graded=8,
    )
    assert costs.cost_usd == pytest.approx(6.50)  # 2 h x 2.50 + 1 h x 1.50
    assert costs.busy_cost_usd == pytest.approx(3.25)  # 1 h x 2.50 + 0.5 h x 1.50
    assert costs.jobs_per_hour == pytest.approx(10 / 24)
    assert costs.cost_per_graded_usd == pytest.approx(6.50 / 8)
    assert costs.busy_cost_per_graded_usd == pytest.approx(3.25 / 8)
    assert costs.graded_per_usd == pytest.approx(8 / 6.50)
    assert costs.unpriced == []


def test_a_model_without_a_price_leaves_every_fleet_figure_unknown():
    costs = FleetCosts(
        window_hours=24,
        models=[
            ModelCost(ModelUsage(H100, 1, observed_s=7200, busy_s=3600), Decimal("2.50")),
            ModelCost(ModelUsage(A100, 1, observed_s=3600, busy_s=1800), None),
        ],
        jobs=10,
        graded=8,
    )
    assert costs.unpriced == [A100]
    assert costs.models[0].cost_usd == pytest.approx(5.0) and costs.models[1].cost_usd is None
    assert costs.cost_usd is None and costs.busy_cost_usd is None
    assert costs.cost_per_graded_usd is None and costs.busy_cost_per_graded_usd is None
    assert costs.graded_per_usd is None
    assert costs.jobs_per_hour == pytest.approx(10 / 24)  # needs no price


def test_no_graded_submission_gives_no_cost_per_submission():
    costs = FleetCosts(
        window_hours=24,
        models=[ModelCost(ModelUsage(H100, 1, observed_s=3600, busy_s=0), Decimal("2"))],
        jobs=0,
        graded=0,
    )
    assert costs.cost_usd == pytest.approx(2.0)
    assert costs.cost_per_graded_usd is None and costs.graded_per_usd == 0


def test_cost_per_1k_tokens_divides_the_cost_by_thousands_of_tokens_served():
    assert cost_per_1k_tokens(cost_usd=6.5, tokens_served=1_300_000) == pytest.approx(0.005)
    assert cost_per_1k_tokens(cost_usd=2.0, tokens_served=500) == pytest.approx(4.0)
    assert cost_per_1k_tokens(cost_usd=6.5, tokens_served=0) is None
    assert cost_per_1k_tokens(cost_usd=None, tokens_served=1000) is None


def test_dollars_show_cents_and_small_amounts_three_digits():
    assert usd(6.5) == "$6.50" and usd(1234.5) == "$1,234.50" and usd(0.8125) == "$0.81"
    assert usd(0.0123456) == "$0.0123" and usd(0) == "$0.00" and usd(None) == "—"
    assert usd(0.0000694321) == "$0.0000694"  # a cost per 1K tokens: never $6.94e-05


def test_the_samples_and_submissions_give_the_usage_and_the_jobs(a_day_of_grading):
    set_price(H100, "2.50")
    set_price(A100, "1.50")
    costs = fleet_costs.fleet_costs(now=timezone.now())
    assert [(m.usage.gpu_model, m.usage.gpus) for m in costs.models] == [(A100, 1), (H100, 1)]
    a100, h100 = costs.models
    assert (h100.observed_hours, h100.busy_hours) == (2.0, 1.0)
    assert (a100.observed_hours, a100.busy_hours) == (1.0, 0.5)
    assert (costs.jobs, costs.graded) == (10, 8)
    assert costs.cost_usd == pytest.approx(6.50) and costs.busy_cost_usd == pytest.approx(3.25)


def test_the_page_shows_every_figure(staff, a_day_of_grading):
    set_price(H100, "2.50")
    set_price(A100, "1.50")
    page = staff.get("/fleet/").content.decode()
    assert "<dd data-cost>$6.50 " in page
    assert "<dd data-busy-cost>$3.25</dd>" in page
    assert "<dd data-jobs>10 · 8 " in page
    assert "<dd data-gpu-jobs-per-hour>0.42 " in page  # 10 jobs / 24 h
    assert "<dd data-per-graded>$0.81</dd>" in page  # 6.50 / 8
    assert "<dd data-busy-per-graded>$0.41 " in page  # 3.25 / 8
    assert "<dd data-per-usd>1.23</dd>" in page  # 8 / 6.50
    assert (
        '<dd data-per-1k-tokens>— <span class="muted">(no serving-lab submission served tokens'
        in page
    )
    h100 = page[page.index(f'data-cost-model="{H100}"') :].split("</tr>")[0]
    assert (
        "<td>2.00</td><td>1.00</td>" in h100
        and "<td>$2.50</td><td>$5.00</td><td>$2.50</td>" in h100
    )


def test_without_a_price_the_page_says_so_and_shows_no_cost(staff, a_day_of_grading):
    set_price(H100, "2.50")
    page = staff.get("/fleet/").content.decode()
    assert f"No price set</strong> for {A100}" in page
    costs = page[page.index("data-costs") : page.index('aria-labelledby="fleet-queues"')]
    assert f'<dd data-cost>— <span class="muted">(no price set for {A100})' in costs
    assert "<dd data-per-graded>— " in costs and "<dd data-per-usd>— " in costs
    assert "$6.50" not in costs and "$5.00" in costs  # the H100's own row keeps its cost


# --- The catalogue's suggestion -----------------------------------------------------------


def test_the_catalogue_price_is_suggested_by_nvml_name(tmp_path):
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(
        '[[gpu]]\nname = "H100-SXM-80GB"\nprice_per_hour = 2.5\n'
        f'nvml_names = ["{H100}"]\n'
        '[[gpu]]\nname = "H100-measured"\nprice_per_hour = 9.0\n'
        f'nvml_names = ["{H100}"]\n'  # a later entry does not override the first
        '[[gpu]]\nname = "bad"\nprice_per_hour = "cheap"\nnvml_names = ["X"]\n'
        '[[gpu]]\nname = "odd"\nprice_per_hour = nan\nnvml_names = ["Y"]\n'
    )
    assert catalogue_prices(catalogue) == {H100: Decimal("2.5")}
    assert catalogue_prices(tmp_path / "missing.toml") == {}
    (tmp_path / "broken.toml").write_text("[[gpu]\n")
    assert catalogue_prices(tmp_path / "broken.toml") == {}


def test_the_repository_catalogue_offers_an_h100_price():
    if not fleet_costs.CATALOGUE_FILE.exists():
        pytest.skip("runner/cost/catalogue.toml is not there")
    assert catalogue_prices()[H100] > 0


def test_the_form_offers_the_catalogue_price_but_stores_nothing(staff, monkeypatch, tmp_path):
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(f'[[gpu]]\nprice_per_hour = 2.5\nnvml_names = ["{H100}"]\n')
    monkeypatch.setattr(fleet_costs, "CATALOGUE_FILE", catalogue)
    quarter_hours(gpu_worker("gpu0@node1", H100), busy=1, idle=1)
    page = staff.get("/fleet/").content.decode()
    row = page[page.index(f'data-price-model="{H100}"') :].split("</tr>")[0]
    assert "<strong>no price set</strong>" in row
    assert 'name="usd_per_hour" value="2.5"' in row
    assert "catalogue assumption, not saved yet" in row
    assert not GpuPrice.objects.exists()
    assert f"No price set</strong> for {H100}" in page


# --- Editing prices -----------------------------------------------------------------------


def test_staff_set_a_price_and_the_costs_use_it(staff, no_catalogue):
    quarter_hours(gpu_worker("gpu0@node1", H100), busy=2, idle=2)  # 1 h observed
    response = staff.post("/fleet/prices/", {"gpu_model": H100, "usd_per_hour": "2.75"})
    assert response.status_code == 302 and response["Location"] == "/fleet/"
    price = GpuPrice.objects.get()
    assert (price.gpu_model, price.usd_per_hour) == (H100, Decimal("2.75"))
    assert price.updated_by.username == "operator"
    page = staff.get("/fleet/").content.decode()
    assert "Saved: NVIDIA H100 80GB HBM3 at $2.75 per GPU-hour." in page
    assert "<dd data-cost>$2.75 " in page
    assert '$2.75 <span class="muted">set by operator' in page


def test_an_htmx_save_returns_the_price_section_and_refreshes_the_figures(staff, no_catalogue):
    gpu_worker("gpu0@node1", H100)
    GpuPrice.objects.create(gpu_model=H100, usd_per_hour=Decimal("2"))
    response = staff.post(
        "/fleet/prices/", {"gpu_model": H100, "usd_per_hour": "3.1"}, HTTP_HX_REQUEST="true"
    )
    html = response.content.decode()
    assert response.status_code == 200 and response["HX-Trigger"] == "fleet-prices-changed"
    assert html.lstrip().startswith('<section class="card" id="gpu-prices"')
    assert "Saved: NVIDIA H100 80GB HBM3 at $3.1 per GPU-hour." in html and "$3.10" in html
    assert GpuPrice.objects.get().usd_per_hour == Decimal("3.1")


@pytest.mark.parametrize("value", ["-1", "cheap", "", "10001"])
def test_a_bad_price_is_refused_and_says_why(staff, no_catalogue, value):
    response = staff.post(
        "/fleet/prices/", {"gpu_model": H100, "usd_per_hour": value}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200 and "HX-Trigger" not in response
    assert "Not saved: usd per hour:" in response.content.decode()
    response = staff.post("/fleet/prices/", {"gpu_model": H100, "usd_per_hour": value})
    assert response.status_code == 400 and "Not saved" in response.content.decode()
    assert not GpuPrice.objects.exists()


def test_a_price_can_be_set_for_a_model_not_seen_yet(staff, no_catalogue):
    staff.post("/fleet/prices/", {"gpu_model": "NVIDIA L4", "usd_per_hour": "0.45"})
    page = staff.get("/fleet/").content.decode()
    assert 'data-price-model="NVIDIA L4"' in page and "$0.45" in page


def test_visitors_without_an_account_cannot_set_a_price(client):
    response = client.post("/fleet/prices/", {"gpu_model": H100, "usd_per_hour": "0.01"})
    assert response.status_code == 403 and not GpuPrice.objects.exists()


def test_accounts_without_staff_status_cannot_set_a_price(client):
    client.force_login(User.objects.create_user("learner", password="pw"))
    response = client.post("/fleet/prices/", {"gpu_model": H100, "usd_per_hour": "0.01"})
    assert response.status_code == 403 and not GpuPrice.objects.exists()
    inactive = User.objects.create_user("gone", password="pw", is_staff=True, is_active=False)
    client.force_login(inactive)
    assert (
        client.post("/fleet/prices/", {"gpu_model": H100, "usd_per_hour": "1"}).status_code == 403
    )
    assert not GpuPrice.objects.exists()


def test_prices_are_not_set_with_get(staff):
    assert staff.get("/fleet/prices/").status_code == 405


def test_the_admin_edits_prices_and_records_who(client):
    admin = User.objects.create_superuser("root", password="pw")
    client.force_login(admin)
    response = client.post("/admin/labs/gpuprice/add/", {"gpu_model": A100, "usd_per_hour": "1.50"})
    assert response.status_code == 302
    price = GpuPrice.objects.get()
    assert (price.usd_per_hour, price.updated_by) == (Decimal("1.50"), admin)


# --- Cost per 1K tokens served (the serving lab) ------------------------------------------


def served(lab, worker: str, *, tokens, seconds, gpu=H100, status=Status.PASSED, **extra):
    """A serving-lab submission whose report says what the learner's engine served."""
    submission = finish(lab, worker, status, **extra)
    submission.report = {
        "metrics": {"tokens_served": {"output_tokens": tokens, "seconds": seconds, "runs": 4}},
        "environment": {"gpu": {"name": gpu} if gpu else None},
    }
    submission.save()
    return submission


def test_serving_runs_give_the_cost_per_1k_tokens_at_each_gpus_price(staff, a_day_of_grading, lab):
    set_price(H100, "2.50")
    set_price(A100, "1.50")
    served(lab, "gpu0@node1", tokens=9000, seconds=36.0)  # 36 s x $2.50/h = $0.025
    served(lab, "gpu0@node2", tokens=3000, seconds=24.0, gpu=A100, status=Status.FAILED)  # $0.01
    served(lab, "gpu0@node1", tokens=0, seconds=3.0, status=Status.ERROR)  # served nothing
    served(lab, "cpu@node3", tokens=5000, seconds=10.0, gpu=None)  # not a GPU worker
    served(lab, "gpu0@node1", tokens=5000, seconds=10.0, hours_ago=25)  # before the window
    costs = fleet_costs.fleet_costs(now=timezone.now())
    serving = costs.serving
    assert (serving.submissions, serving.output_tokens) == (2, 12000)
    assert serving.seconds == pytest.approx(60.0)
    assert serving.cost_usd == pytest.approx(0.035)
    assert serving.per_1k_tokens_usd == pytest.approx(0.035 / 12)
    page = staff.get("/fleet/").content.decode()
    assert (
        '<dd data-per-1k-tokens>$0.00292 <span class="muted">(12000 tokens served by learners\' '
        "engines in 60.0 s of GPU time, 2 serving submissions)" in page
    )


def test_serving_on_a_gpu_without_a_price_shows_no_cost_per_1k_tokens(staff, a_day_of_grading, lab):
    set_price(H100, "2.50")
    served(lab, "gpu0@node2", tokens=3000, seconds=24.0, gpu=A100)
    served(lab, "gpu0@node1", tokens=9000, seconds=36.0)
    assert fleet_costs.fleet_costs(now=timezone.now()).serving.per_1k_tokens_usd is None
    page = staff.get("/fleet/").content.decode()
    assert f'<dd data-per-1k-tokens>— <span class="muted">(no price set for {A100})' in page


@pytest.mark.parametrize(
    "tokens_served",
    [
        "lots",
        {"output_tokens": -5, "seconds": 1.0},
        {"output_tokens": True, "seconds": 1.0},
        {"output_tokens": 100, "seconds": -1.0},
        {"output_tokens": 100, "seconds": "1"},
    ],
)
def test_a_malformed_token_count_is_left_out_not_trusted(a_day_of_grading, lab, tokens_served):
    set_price(H100, "2.50")
    served(lab, "gpu0@node1", tokens=9000, seconds=36.0)
    odd = finish(lab, "gpu0@node1", Status.PASSED)
    odd.report = {"metrics": {"tokens_served": tokens_served}, "environment": {}}
    odd.save()
    serving = fleet_costs.fleet_costs(now=timezone.now()).serving
    assert (serving.submissions, serving.output_tokens) == (1, 9000)
