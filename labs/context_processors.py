from django.conf import settings


def sandbox_warning(request):
    """Every page says so when grading runs learner code without a sandbox."""
    return {"unsandboxed_grading": settings.RUNNER_ALLOW_UNSANDBOXED}
