from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from labs import tasks
from labs.catalog import LabCatalogError, sync_labs


class Command(BaseCommand):
    help = "Load the lab specs from notebooks/<lab>/lab.toml into the database (idempotent)."

    def handle(self, *args, **options):
        try:
            counts = sync_labs(tasks.read_lab_specs())
        except (LabCatalogError, ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        summary = ", ".join(f"{n} {what}" for what, n in counts.items())
        self.stdout.write(self.style.SUCCESS(f"Labs loaded: {summary}"))
