from django.apps import AppConfig


class LabsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "labs"
    verbose_name = "Labs and submissions"

    def ready(self):
        from labs import checks  # noqa: F401 - registers the system checks
