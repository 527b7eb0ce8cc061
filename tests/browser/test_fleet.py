"""The fleet page in a browser: a staff member sees the workers, and the fragment refreshes
on its own when a new heartbeat arrives (htmx polling, every 5 s); an alert shows at the top,
and a price set in the form turns into costs without a reload."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import User
from django.utils import timezone

from labs import fleet_costs
from labs.alerts import evaluate_alerts
from labs.models import GpuPrice, Worker, WorkerSample
from labs.tasks import record_heartbeat
from tests.conftest import save_screenshot
from tests.labs.test_workers import heartbeat, silence


def test_the_fleet_page_renders_and_refreshes_itself(page, site):
    User.objects.create_user("operator", password="a-long-password-1", is_staff=True)
    first = heartbeat("gpu0@node1", running=[])
    record_heartbeat(first)
    record_heartbeat(heartbeat("gpu1@node1"))
    silence("gpu1@node1", 120)
    an_hour_of_jobs("gpu0@node1")

    page.goto(f"{site}/fleet/")
    page.wait_for_url(f"{site}/admin/login/?next=/fleet/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "a-long-password-1")
    page.click("input[type=submit]")
    page.wait_for_url(f"{site}/fleet/")

    alive = page.locator('[data-worker="gpu0@node1"]')
    assert alive.locator(".worker-status").inner_text() == "● alive"
    lost = page.locator('[data-worker="gpu1@node1"]')
    assert lost.locator(".worker-status").inner_text() == "✗ lost"
    assert alive.locator("[data-utilization]").inner_text() == "97 %"
    assert alive.locator("svg.spark polyline").count() == 2  # one unbroken line each
    save_screenshot(page, "fleet.png", full_page=True)

    # The worker comes under load: its next heartbeat shows on the page without a reload.
    busy = heartbeat("gpu0@node1", running=["sub-1"]) | {"boot": first["boot"], "seq": 2}
    busy["gpus"][0]["gpu_utilization_pct"] = 12
    record_heartbeat(busy)
    page.wait_for_function(
        "() => document.querySelector('[data-worker=\"gpu0@node1\"] [data-utilization]')"
        ".textContent === '12 %'",
        timeout=12_000,
    )
    assert "jobs running 1" in alive.inner_text()


def test_an_alert_shows_and_a_price_set_in_the_form_becomes_costs(
    page, site, settings, monkeypatch, tmp_path
):
    settings.FLEET_ALERT_WEBHOOK_URL, settings.FLEET_ALERT_EMAILS = "", []
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text('[[gpu]]\nprice_per_hour = 2.5\nnvml_names = ["NVIDIA H100 80GB HBM3"]\n')
    monkeypatch.setattr(fleet_costs, "CATALOGUE_FILE", catalogue)
    User.objects.create_user("operator", password="a-long-password-1", is_staff=True)
    record_heartbeat(heartbeat("gpu0@node1"))
    record_heartbeat(heartbeat("gpu1@node1"))
    silence("gpu1@node1", 120)
    an_hour_of_jobs("gpu0@node1")  # 239 samples of 15 s: 0.9958 GPU-hours observed
    evaluate_alerts(now=timezone.now())

    page.goto(f"{site}/fleet/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "a-long-password-1")
    page.click("input[type=submit]")
    page.wait_for_url(f"{site}/fleet/")

    alert = page.locator('[data-alert="worker-lost:gpu1@node1"]')
    assert alert.inner_text().startswith("⚠ Firing for ")
    assert "Worker gpu1@node1 is lost" in alert.inner_text()
    assert "no price set for NVIDIA H100 80GB HBM3" in page.locator("[data-cost]").inner_text()

    row = page.locator('[data-price-model="NVIDIA H100 80GB HBM3"]')
    field = row.locator('input[name="usd_per_hour"]')
    assert field.input_value() == "2.5"  # offered, not stored
    assert "catalogue assumption" in row.inner_text() and not GpuPrice.objects.exists()
    field.fill("3")
    row.locator("button").click()
    note = page.locator("[data-price-note]")
    note.wait_for()
    assert note.inner_text() == "Saved: NVIDIA H100 80GB HBM3 at $3 per GPU-hour."
    # The save tells the polled figures to refresh at once (HX-Trigger), not at the next poll.
    page.wait_for_function(
        "() => document.querySelector('[data-cost]').textContent.startsWith('$2.99')",
        timeout=4_000,
    )
    assert GpuPrice.objects.get().usd_per_hour == 3
    save_screenshot(page, "fleet-costs.png", full_page=True)


def an_hour_of_jobs(name: str) -> None:
    """Samples as an hour of heartbeats would leave them: jobs of about five minutes (GPU
    busy, memory in use) with three idle minutes between them."""
    worker = Worker.objects.get(name=name)
    now = timezone.now()
    samples = []
    for i in range(1, 240):
        busy = (i // 20) % 8 < 5
        samples.append(
            WorkerSample(
                worker=worker,
                at=now - timedelta(seconds=15 * i),
                gpu_index=0,
                gpu_utilization=90 + i % 7 if busy else i % 3,
                memory_used=(30 + i % 5 if busy else 1) << 30,
                power=600 if busy else 70,
                temperature=70 if busy else 38,
                jobs_running=int(busy),
                interval_s=15,
            )
        )
    WorkerSample.objects.bulk_create(samples)
