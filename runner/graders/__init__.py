"""One module per lab grader, named by the `grader` field of its lab.toml.

Each exposes `grade(*, spec, solution_path, seed, device_class, workdir, sandbox, locate)`
returning a GradeResult (see runner.graders.base).
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def load_grader(name: str) -> ModuleType:
    if not _NAME.match(name) or name == "base":
        raise ValueError(f"{name!r} is not a grader name")
    module = importlib.import_module(f"runner.graders.{name}")
    if not callable(getattr(module, "grade", None)):
        raise ValueError(f"runner.graders.{name} has no grade() function")
    return module
