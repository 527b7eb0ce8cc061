"""Instructor accounts: `create_instructor` makes a staff account (no admin permissions) and
prints a generated password once, or reads it from an environment variable; `make run`
creates the local `instructor` on its first start only, and only with DEBUG on."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from labs.management.commands.runstack import Command as RunStack

pytestmark = pytest.mark.django_db


def run(*args, **options) -> str:
    out = io.StringIO()
    call_command("create_instructor", *args, stdout=out, **options)
    return out.getvalue()


def test_it_prints_a_one_time_password_that_signs_in(client):
    output = run("ines")
    password = re.search(r"One-time password: (\S+)", output).group(1)
    assert len(password) >= 16 and "shown only now" in output
    user = User.objects.get(username="ines")
    assert user.is_staff and not user.is_superuser and not user.user_permissions.exists()
    assert password not in user.password  # only the hash is stored
    response = client.post("/instructor/login/", {"username": "ines", "password": password})
    assert response.status_code == 302 and response["Location"] == "/instructor/"


def test_it_reads_the_password_from_an_environment_variable(monkeypatch):
    monkeypatch.setenv("INSTRUCTOR_PASSWORD", "correct-horse-battery-staple")
    output = run("ines", "--password-from-env", "INSTRUCTOR_PASSWORD")
    assert "correct-horse" not in output and "One-time password" not in output
    assert User.objects.get(username="ines").check_password("correct-horse-battery-staple")


def test_it_refuses_a_missing_variable_a_weak_password_and_a_taken_name(monkeypatch):
    with pytest.raises(CommandError, match="NOPE is not set"):
        run("ines", "--password-from-env", "NOPE")
    monkeypatch.setenv("WEAK", "12345678")
    with pytest.raises(CommandError, match="too weak"):
        run("ines", "--password-from-env", "WEAK")
    assert not User.objects.filter(username="ines").exists()
    run("ines")
    with pytest.raises(CommandError, match="already exists.*changepassword ines"):
        run("ines")


def test_make_run_creates_the_local_instructor_once(settings):
    settings.DEBUG = True
    first, second = io.StringIO(), io.StringIO()
    RunStack(stdout=first).local_instructor(8000)
    output = first.getvalue()
    password = re.search(r"'instructor', password (\S+)", output).group(1)
    assert "shown only this once" in output and "http://127.0.0.1:8000/instructor/login/" in output
    assert User.objects.get(username="instructor").check_password(password)

    RunStack(stdout=second).local_instructor(8000)
    again = second.getvalue()
    assert "password was printed on the first start" in again and password not in again


def test_make_run_creates_no_account_without_debug(settings):
    settings.DEBUG = False
    RunStack(stdout=io.StringIO()).local_instructor(8000)
    assert not User.objects.exists()


def test_an_instructor_changes_the_generated_password(client):
    password = re.search(r"One-time password: (\S+)", run("ines")).group(1)
    client.post("/instructor/login/", {"username": "ines", "password": password})
    new = "a-new-and-long-password-2"
    response = client.post(
        "/instructor/password/",
        {"old_password": password, "new_password1": new, "new_password2": new},
    )
    assert response.status_code == 302 and response["Location"] == "/instructor/"
    assert User.objects.get(username="ines").check_password(new)
