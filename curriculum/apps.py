from django.apps import AppConfig


class CurriculumConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "curriculum"
    verbose_name = "Curriculum (read-only: edit curriculum/data/roadmap.yaml)"
