from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def unsandboxed_grading_is_for_laptops_only(app_configs, **kwargs):
    if settings.RUNNER_ALLOW_UNSANDBOXED and not settings.DEBUG:
        return [
            Error(
                "RUNNER_ALLOW_UNSANDBOXED is set with DEBUG off.",
                hint="Learner code would run without the bubblewrap sandbox. That is only for "
                "a single-user laptop; unset it and install bubblewrap on grading workers.",
                id="labs.E001",
            )
        ]
    return []
