"""Settings come from the environment; production settings pass `check --deploy`; static
files are compressed with hashed names; PostgreSQL works as the database."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def manage(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    # The browser tests' DJANGO_ALLOW_ASYNC_UNSAFE must not leak into a deploy check.
    dropped = ("DEBUG", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE")
    clean = {k: v for k, v in os.environ.items() if k not in dropped}
    clean["DJANGO_SETTINGS_MODULE"] = "config.settings"
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def production_env(tmp_path: Path) -> dict[str, str]:
    return {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "roadmap.example.org",
        "VAR_DIR": str(tmp_path),
    }


def test_production_settings_pass_the_deploy_check(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_it_refuses_to_start_without_a_secret_key_in_production(tmp_path):
    result = manage("check", env={"VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_a_bad_boolean_in_the_environment_is_named(tmp_path):
    result = manage("check", env=production_env(tmp_path) | {"DEBUG": "maybe"})
    assert result.returncode != 0 and "DEBUG='maybe' is not a boolean" in result.stderr


def test_collectstatic_writes_compressed_files_with_hashed_names(tmp_path):
    env = production_env(tmp_path) | {"STATIC_ROOT": str(tmp_path / "static")}
    result = manage("collectstatic", "--noinput", env=env)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in (tmp_path / "static" / "vendor" / "htmx").iterdir()}
    assert any(
        n.startswith("htmx.min.") and n.endswith(".js") and n != "htmx.min.js" for n in names
    )
    assert any(n.endswith(".js.gz") for n in names)


def test_the_embedded_broker_defaults_agree_with_the_runner(tmp_path):
    """Web and grading workers must share one broker folder in the embedded mode."""
    from runner.broker import broker_settings_from_env
    from runner.filesystem_broker import TRANSPORT

    env = {"DEBUG": "1", "VAR_DIR": str(tmp_path)}
    printed = manage(
        "shell",
        "-c",
        "import json; from django.conf import settings as s; "
        "print(json.dumps([s.CELERY_BROKER_URL, s.CELERY_BROKER_TRANSPORT_OPTIONS, "
        "s.CELERY_BROKER_TRANSPORT]))",
        env=env,
    )
    assert printed.returncode == 0, printed.stderr
    url, options, transport = json.loads(printed.stdout.strip().splitlines()[-1])
    theirs = broker_settings_from_env(env)
    assert theirs["broker_url"] == url == "filesystem://"
    assert theirs["broker_transport_options"] == options
    assert theirs["broker_transport"] == transport == TRANSPORT


@pytest.mark.postgres
def test_postgresql_works_as_the_database(tmp_path):
    psycopg = pytest.importorskip("psycopg")
    name = f"roadmap_{uuid.uuid4().hex[:10]}"
    admin_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}")
    try:
        env = production_env(tmp_path) | {
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}"
        }
        assert manage("migrate", "--noinput", env=env).returncode == 0
        first = manage("load_curriculum", env=env)
        second = manage("load_curriculum", env=env)
        assert "54 created" in first.stdout, first.stderr
        assert "54 unchanged" in second.stdout, second.stderr
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
