"""Labs models in the admin: the fleet's GPU prices (editable) and its alerts (read-only:
they are opened and resolved by the evaluation task, labs/alerts.py)."""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone

from labs.alerts import FleetAlert
from labs.fleet_costs import GpuPrice


@admin.register(GpuPrice)
class GpuPriceAdmin(admin.ModelAdmin):
    list_display = ["gpu_model", "usd_per_hour", "updated_by", "updated_at"]
    fields = ["gpu_model", "usd_per_hour"]
    search_fields = ["gpu_model"]

    def save_model(self, request, obj, form, change):
        # Who set a price and when, as the fleet page's form records it.
        obj.updated_by = request.user
        obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)


@admin.register(FleetAlert)
class FleetAlertAdmin(admin.ModelAdmin):
    list_display = ["text", "rule", "started_at", "resolved_at", "last_notified_at"]
    list_filter = ["rule"]
    readonly_fields = [field.name for field in FleetAlert._meta.fields]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False
