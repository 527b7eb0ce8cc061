"""What the web side shows about grading isolation: `runner.sandbox.sandbox_status()`.

A dict with the mode (bwrap or none), bubblewrap's path and version, the host uid sandboxed
code runs as, whether cgroup limits are available (and why not), whether the worker would
refuse to grade, and `warnings`: one sentence for each way isolation is weaker than intended,
meant for a banner.
"""

from __future__ import annotations

import functools
import subprocess
from typing import Any

from runner.sandbox import (
    ALLOW_UNSANDBOXED_ENV,
    SandboxPolicy,
    SandboxUnavailable,
)


def describe(policy: SandboxPolicy | None = None) -> dict[str, Any]:
    """How this machine would sandbox learner code, for a status page or warning banner.

    Never raises. `ok` is False when the worker would refuse to grade; `warnings` lists, in
    one sentence each, every way in which the isolation is weaker than intended.
    """
    try:
        policy = policy or SandboxPolicy.from_env()
    except SandboxUnavailable as exc:
        return {"mode": "bwrap", "ok": False, "reason": str(exc), "warnings": [str(exc)]}
    status: dict[str, Any] = {
        "mode": policy.mode,
        "ok": True,
        "reason": None,
        "bwrap": None,
        "uid": policy.uid,
        "unprivileged": policy.uid != 0,
        "cgroup": {**policy.cgroups().to_dict(), "required": policy.require_cgroup},
        "gpu_devices": list(policy.gpu_devices),
        "warnings": [],
    }
    warnings = status["warnings"]
    if policy.mode == "none":
        warnings.append(
            f"Learner code runs WITHOUT a sandbox ({ALLOW_UNSANDBOXED_ENV}=1): use this only "
            "on a single-user development machine."
        )
    else:
        status["bwrap"] = {"path": policy.bwrap, "version": _bwrap_version(policy.bwrap)}
    try:
        policy.check()
    except SandboxUnavailable as exc:
        status["ok"], status["reason"] = False, str(exc)
        warnings.append(f"The worker refuses to grade: {exc}.")
    if policy.mode == "bwrap":
        if policy.uid == 0:
            warnings.append("Sandboxed code runs as root on the host (RUNNER_SANDBOX_UID=0).")
        if not status["cgroup"]["available"]:
            warnings.append(
                "No cgroup limits: memory and process limits hold per process only ("
                + status["cgroup"]["reason"]
                + ")."
            )
    return status


@functools.cache
def _bwrap_version(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
