from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from curriculum.loader import CurriculumError, load_curriculum


class Command(BaseCommand):
    help = "Load the roadmap data file into the database (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", default=str(settings.CURRICULUM_FILE))

    def handle(self, *args, path: str, verbosity: int, **options):
        try:
            result = load_curriculum(Path(path))
        except (CurriculumError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        if verbosity > 1:
            for change in result.changes:
                self.stdout.write(f"  {change}")
        self.stdout.write(self.style.SUCCESS(f"Curriculum loaded from {path}: {result}"))
