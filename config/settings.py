"""Django settings for Inference Roadmap.

Everything an operator changes comes from the environment (see config/env.py and the
README's "Settings" table). With no environment at all you get the embedded defaults:
SQLite in var/ and a Celery broker that needs no server (kombu's filesystem transport),
which is what `make run` uses. Production sets DATABASE_URL, CELERY_BROKER_URL,
SECRET_KEY and ALLOWED_HOSTS, and leaves DEBUG off.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it in the environment (50+ random characters), "
            "or set DEBUG=1 for local development."
        )
    # Only ever used with DEBUG on, on a developer's own machine.
    SECRET_KEY = "dev-only-not-secret-0123456789-abcdefghijklmnopqrstuvwxyz"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "curriculum",
    "labs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "labs.context_processors.sandbox_warning",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Instructors are staff accounts; learners have none (their browser keeps a learner key).
LOGIN_URL = "instructor-login"
LOGIN_REDIRECT_URL = "instructor-home"
LOGOUT_REDIRECT_URL = "overview"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed files with content-hashed names, served by whitenoise (no CDN).
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Security -------------------------------------------------------------------------
# Secure by default whenever DEBUG is off; a TLS-terminating proxy in front is assumed.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if env_bool("SECURE_HSTS_PRELOAD", False) is False:
    # HSTS preloading is a one-way door; operators opt in explicitly. Django's deploy
    # check W021 only nags about it, so silence that single warning.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]

# --- Celery -----------------------------------------------------------------------------
# Embedded default: kombu's filesystem transport, a broker that needs no server. Web and
# worker processes on one machine share the folder. runner/broker.py computes the same
# default for nodes without Django; tests/test_settings.py checks that the two agree.
BROKER_DIR = Path(env_str("BROKER_DIR", str(VAR_DIR / "broker")))
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport, publishing atomically (runner/filesystem_broker.py: a
    # reader could see a message file before its writer had filled it).
    CELERY_BROKER_TRANSPORT = "runner.filesystem_broker:AtomicFilesystemTransport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        # The default (1 s) would add up to a second to every hop between processes.
        "polling_interval": 0.1,
    }
    # kombu does not create its folders, and both web and worker processes need them.
    for _folder in ("queue", "control", "processed"):
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "web"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {}

# --- Logging ----------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# --- Product ----------------------------------------------------------------------------
CURRICULUM_FILE = Path(
    env_str("CURRICULUM_FILE", str(BASE_DIR / "curriculum" / "data" / "roadmap.yaml"))
)
NOTEBOOKS_DIR = Path(env_str("NOTEBOOKS_DIR", str(BASE_DIR / "notebooks")))

# Submissions: caps, rate limits and the sweeper's leases (see labs/tasks.py).
SUBMISSION_MAX_BYTES = env_int("SUBMISSION_MAX_BYTES", 5 * 1024 * 1024)
SUBMISSIONS_PER_LEARNER_PER_HOUR = env_int("SUBMISSIONS_PER_LEARNER_PER_HOUR", 30)
SUBMISSIONS_PER_IP_PER_HOUR = env_int("SUBMISSIONS_PER_IP_PER_HOUR", 120)
SUBMISSIONS_ACTIVE_PER_LEARNER = env_int("SUBMISSIONS_ACTIVE_PER_LEARNER", 3)
SUBMISSION_MAX_ATTEMPTS = env_int("SUBMISSION_MAX_ATTEMPTS", 3)
# A job sent but not started after this long is sent again (its message may be lost).
SUBMISSION_QUEUED_LEASE_S = env_int("SUBMISSION_QUEUED_LEASE_S", 30 * 60)
# A running job silent for its lab's total time limit plus this is presumed dead.
SUBMISSION_RUNNING_GRACE_S = env_int("SUBMISSION_RUNNING_GRACE_S", 120)
SWEEP_INTERVAL_S = env_int("SWEEP_INTERVAL_S", 60)
CELERY_BEAT_SCHEDULE["sweep-submissions"] = {
    "task": "labs.sweep_submissions",
    "schedule": SWEEP_INTERVAL_S,
    "options": {"queue": "web", "expires": SWEEP_INTERVAL_S},
}
# A worker silent this long (its heartbeats come every RUNNER_HEARTBEAT_S, 15 s by default)
# that did not say it was stopping is lost: the sweeper re-queues the jobs it was running.
WORKER_LOST_AFTER_S = env_int("WORKER_LOST_AFTER_S", 60)
# Fleet alerts (labs/alerts.py): which rules run, their thresholds, where they are sent.
FLEET_ALERT_RULES = env_list(
    "FLEET_ALERT_RULES",
    ["gpu-idle", "queue-wait", "worker-lost", "gpu-unhealthy", "gpu-throttled"],
)
FLEET_ALERT_IDLE_BELOW_PCT = env_int("FLEET_ALERT_IDLE_BELOW_PCT", 10)
FLEET_ALERT_IDLE_MINUTES = env_int("FLEET_ALERT_IDLE_MINUTES", 15)
# Also alert on a GPU idle with nothing queued (it still costs money); off: quiet nights.
FLEET_ALERT_IDLE_ALWAYS = env_bool("FLEET_ALERT_IDLE_ALWAYS", False)
FLEET_ALERT_QUEUE_WAIT_S = env_int("FLEET_ALERT_QUEUE_WAIT_S", 600)
FLEET_ALERT_THROTTLE_MINUTES = env_int("FLEET_ALERT_THROTTLE_MINUTES", 2)
FLEET_ALERT_WEBHOOK_URL = env_str("FLEET_ALERT_WEBHOOK_URL", "")
FLEET_ALERT_WEBHOOK_TIMEOUT_S = env_int("FLEET_ALERT_WEBHOOK_TIMEOUT_S", 5)
FLEET_ALERT_EMAILS = env_list("FLEET_ALERT_EMAILS", [])
FLEET_ALERT_INTERVAL_S = env_int("FLEET_ALERT_INTERVAL_S", 60)
CELERY_BEAT_SCHEDULE["evaluate-fleet-alerts"] = {
    "task": "labs.evaluate_fleet_alerts",
    "schedule": FLEET_ALERT_INTERVAL_S,
    "options": {"queue": "web", "expires": FLEET_ALERT_INTERVAL_S},
}
# Outgoing mail (fleet alerts): an SMTP server, or nothing is sent.
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "inference-roadmap@localhost")
# Verification tokens (a passed lab marks its milestone verified in the browser).
VERIFICATION_SALT = "inference-roadmap.milestone-verified"
# Set for a local worker that runs learner code without bubblewrap (a single-user laptop
# only): every page then carries a warning, and `check --deploy` refuses it.
RUNNER_ALLOW_UNSANDBOXED = env_bool("RUNNER_ALLOW_UNSANDBOXED", False)
# Which workers grade new submissions: "cpu" (any machine) or "gpu" (GPU worker nodes).
GRADING_DEVICE_CLASS = env_str("GRADING_DEVICE_CLASS", "cpu")
