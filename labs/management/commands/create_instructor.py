"""`python manage.py create_instructor <username>`: a staff account for the instructor pages.

The password is generated and printed once (it is stored only as a hash), or read from an
environment variable with --password-from-env for scripted deployments; never from the
command line, where it would land in the shell history and the process list. The account is
staff without any admin permission: it can use /instructor/ and nothing in /admin/.
"""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError


class InstructorExists(Exception):
    pass


def create_instructor(username: str, *, password: str | None = None, email: str = ""):
    """Create the staff account; returns (user, password), generating the password if none
    is given. Raises InstructorExists when the username is taken."""
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        raise InstructorExists(username)
    password = password or secrets.token_urlsafe(12)
    user = User(username=username, email=email, is_staff=True)
    validate_password(password, user)
    user.set_password(password)
    try:
        user.save()
    except IntegrityError as exc:  # created by someone else in the meantime
        raise InstructorExists(username) from exc
    return user, password


class Command(BaseCommand):
    help = "Create an instructor (a staff account) and print its one-time password."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--password-from-env",
            metavar="VARIABLE",
            help="read the password from this environment variable instead of generating one",
        )

    def handle(self, *args, username: str, email: str, password_from_env: str | None, **options):
        password = None
        if password_from_env:
            password = os.environ.get(password_from_env)
            if not password:
                raise CommandError(f"The environment variable {password_from_env} is not set.")
        try:
            _, password = create_instructor(username, password=password, email=email)
        except InstructorExists as exc:
            raise CommandError(
                f"The user {username!r} already exists; set a new password with "
                f"`python manage.py changepassword {username}`."
            ) from exc
        except ValidationError as exc:
            raise CommandError("The password is too weak: " + " ".join(exc.messages)) from exc
        self.stdout.write(self.style.SUCCESS(f"Created the instructor {username!r}."))
        if not password_from_env:
            self.stdout.write(
                f"One-time password: {password}\n"
                "It is shown only now and stored only as a hash. Sign in at /instructor/login/ "
                "and change it at /instructor/password/."
            )
