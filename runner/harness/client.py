"""The trusted side of the harness: start a sandboxed serving child, call it, time it, stop it.

Every failure of the child (it never gets ready, dies, hangs, raises, or writes garbage) comes
back as a HarnessFailure whose message is written for the learner; the grader turns it into
a report status. Nothing the child says is trusted beyond the arrays it returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner import proctree, safeio
from runner.harness.protocol import Deadline, FrameReader, PeerClosed, ProtocolError, write_frame
from runner.sandbox import ResourceLimits, SandboxPolicy, describe_end, kill

_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from runner.harness.serve import main; sys.exit(main(sys.argv[2:]))"
)
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named only from Python 3.10 on Linux builds
_PIPE_BYTES = 1 << 20
LOG_TAIL_BYTES = 8192


class HarnessFailure(Exception):
    """The served function could not produce an answer. `kind` picks the report status:
    "timeout" for a hang, "error" for everything else."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Entry:
    """What a child serves: a learner file and function name, or trusted `module:function`."""

    label: str  # as it reads mid-sentence: "your softmax()", "the naive baseline"
    file: Path | None = None
    function: str | None = None
    trusted: str | None = None
    # Trusted "module:function" in the child that makes `call_json` calls (serve._call_json).
    adapter: str | None = None


@dataclass(frozen=True)
class CallResult:
    """One answered call. `arrays` is None when the function returned something else."""

    arrays: list[np.ndarray] | None
    returned_type: str | None = None


@dataclass(frozen=True)
class JsonCall:
    """One answered `call_json`. `answer` is None and `returned_instead` names what came back
    when the function's answer was not JSON data."""

    elapsed_ns: int
    answer: Any = None
    returned_instead: str | None = None
    arrays: list[np.ndarray] = field(default_factory=list)


class ServedFunction:
    """A sandboxed child process serving one function; use as a context manager."""

    @property
    def subject(self) -> str:
        """The label at the start of a sentence."""
        return self.entry.label[:1].upper() + self.entry.label[1:]

    def __init__(
        self,
        *,
        entry: Entry,
        policy: SandboxPolicy,
        jobdir: Path,
        log_path: Path,
        limits: ResourceLimits,
        device: str = "cpu",
        threads: int = 0,
        max_payload_bytes: int = 1 << 30,
        env: dict[str, str] | None = None,
        locate: Callable[[int], tuple[int, int] | None] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        """`pass_fds`: descriptors the child inherits under the same numbers, e.g. a listening
        socket the grader made (the sandbox has no network and no host folder, so a server in
        it can only accept on a socket handed in)."""
        self.entry = entry
        self.locate = locate
        self.log_path = log_path
        self.max_payload_bytes = max_payload_bytes
        argv = [sys.executable, "-I", "-c", _BOOTSTRAP, policy.code_root()]
        inputs: tuple[str, ...] = ()
        if entry.trusted:
            argv += ["--trusted", entry.trusted]
        else:
            # Copied into the sandbox's own /job; nothing there reaches the host.
            inputs = (entry.file.name,)
            inside = f"{policy.job_path(jobdir)}/{entry.file.name}"
            argv += ["--file", inside, "--function", entry.function]
        argv += ["--device", device, "--threads", str(threads)]
        if entry.adapter:
            argv += ["--adapter", entry.adapter]
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):  # a smaller pipe is only slower
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        # What the child prints goes to this log, whose size RLIMIT_FSIZE caps.
        log = safeio.open_append(log_path)
        try:
            self.process = policy.spawn(
                argv,
                jobdir=jobdir,
                limits=limits,
                env=env,
                stdin=to_child_r,
                stdout=from_child_w,
                stderr=log,
                inputs=inputs,
                pass_fds=pass_fds,
            )
        finally:
            os.close(log)
            os.close(to_child_r)
            os.close(from_child_w)
        os.set_blocking(self._to_child, False)
        self._reader = FrameReader(self._from_child, max_payload_bytes=max_payload_bytes)
        self._next_id = 0
        self.paused = False
        self._stopped: list[int] = []

    def __enter__(self) -> ServedFunction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, *, timeout_s: float) -> None:
        """Wait for the child to load its function; raise HarnessFailure if it cannot."""
        header = self._receive(timeout_s=timeout_s, doing="loading your solution")
        op = header.get("op")
        if op == "ready":
            self._check_tampering(header, "while loading")
            return
        if op == "load_failed":
            raise HarnessFailure("error", self._load_failure(header))
        raise HarnessFailure(
            "error", f"{self.subject} sent {op!r} while loading; the grader expected 'ready'."
        )

    def call(
        self,
        arrays: Sequence[np.ndarray],
        *,
        timeout_s: float,
        scalars: Sequence[float | int] = (),
    ) -> CallResult:
        return self.timed_call(arrays, timeout_s=timeout_s, scalars=scalars)[1]

    def timed_call(
        self,
        arrays: Sequence[np.ndarray],
        *,
        timeout_s: float,
        scalars: Sequence[float | int] = (),
    ) -> tuple[int, CallResult]:
        """Send one call and wait for its answer; return (round-trip ns, result). `scalars`
        are plain numbers passed after the arrays (e.g. an epsilon).

        The clock is read here, in the trusted process, around the whole round trip, so that
        nothing the child does to its own clocks can change it.
        """
        shapes = " and ".join("x".join(map(str, a.shape)) or "scalar" for a in arrays)
        elapsed, header, outputs = self._round_trip(
            {"op": "call", **({"scalars": list(scalars)} if scalars else {})},
            arrays,
            timeout_s=timeout_s,
            doing=f"running on an input of shape {shapes}",
            sending=f"its input of shape {shapes}",
            raised_on=f"on an input of shape {shapes}",
        )
        op = header.get("op")
        if op == "result":
            return elapsed, CallResult(arrays=outputs)
        if op == "bad_return":
            return elapsed, CallResult(arrays=None, returned_type=str(header.get("type"))[:100])
        raise HarnessFailure("error", f"{self.subject} sent an unexpected {op!r} message.")

    def call_json(self, request: dict[str, Any], *, timeout_s: float, doing: str) -> JsonCall:
        """A call whose request and answer are JSON data (plus, from an adapter, arrays such
        as a file's bytes), for labs whose functions take a model or a workload rather than
        arrays. `doing` reads mid-sentence in messages: "profiling the model"."""
        elapsed, reply, arrays = self._round_trip(
            {"op": "call_json", "request": request},
            (),
            timeout_s=timeout_s,
            doing=doing,
            sending=f"the request for {doing}",
            raised_on=f"while {doing}",
        )
        op = reply.get("op")
        if op == "json_result":
            return JsonCall(elapsed_ns=elapsed, answer=reply.get("result"), arrays=arrays)
        if op == "bad_return":
            return JsonCall(elapsed_ns=elapsed, returned_instead=str(reply.get("type"))[:300])
        raise HarnessFailure("error", f"{self.subject} sent an unexpected {op!r} message.")

    def bench(
        self,
        op: str,
        header: dict[str, Any],
        arrays: Sequence[np.ndarray] = (),
        *,
        timeout_s: float,
    ) -> tuple[int, dict[str, Any], list[np.ndarray]]:
        """One request to the child's in-process bench (runner.measure.device_timing); returns
        (round-trip ns by this process's clock, reply header, reply arrays)."""
        doing = _BENCH_DOING.get(op, "being measured")
        elapsed, reply, outputs = self._round_trip(
            {**header, "op": op},
            arrays,
            timeout_s=timeout_s,
            doing=doing,
            sending=f"while {doing}",
            raised_on=f"while {doing}",
        )
        if reply.get("op") != "bench":
            raise HarnessFailure(
                "error", f"{self.subject} sent an unexpected {reply.get('op')!r} message."
            )
        return elapsed, reply, outputs

    def _round_trip(
        self,
        header: dict[str, Any],
        arrays: Sequence[np.ndarray],
        *,
        timeout_s: float,
        doing: str,
        sending: str,
        raised_on: str,
    ) -> tuple[int, dict[str, Any], list[np.ndarray]]:
        """Send one request, wait for its answer, time both by this process's clock. Raises
        HarnessFailure for a child that stops reading, dies, answers another request, replaced
        a watched name, or raised."""
        self._next_id += 1
        request_id = self._next_id
        start = time.perf_counter_ns()
        try:
            write_frame(
                self._to_child,
                {**header, "id": request_id},
                arrays,
                deadline=time.monotonic() + timeout_s,
            )
        except Deadline:
            raise HarnessFailure("timeout", f"{self.subject} stopped reading {sending}.") from None
        except OSError:
            raise HarnessFailure("error", self._died(f"before {doing}")) from None
        reply, outputs = self._receive_frame(timeout_s=timeout_s, doing=doing)
        elapsed = time.perf_counter_ns() - start
        if reply.get("id") != request_id:
            raise HarnessFailure(
                "error",
                f"{self.subject} answered a request it was not asked (the grader's channel was "
                "written to by something else).",
            )
        self._check_tampering(reply, f"while {doing}")
        if reply.get("op") == "raised":
            message = _text(reply.get("message"))
            raise HarnessFailure(
                "error",
                f"{self.subject} raised {_text(reply.get('type'))}{self._where(reply)} "
                f"{raised_on}" + (f": {message}" if message else "."),
            )
        return elapsed, reply, outputs

    def _check_tampering(self, header: dict[str, Any], when: str) -> None:
        """The child's trusted code lists the watched names that no longer point where they
        did before the learner's code loaded (runner.measure.device_timing.TamperWatch)."""
        changed = header.get("tampered")
        if not changed:
            return
        names = ", ".join(_text(n, 80) for n in list(changed)[:6])
        raise HarnessFailure(
            "failed",
            f"{self.subject} replaced {names} {when}. Timers, synchronisation, comparison "
            "functions and the grading harness are off limits: the measurement does not use "
            "them, and replacing them fails the submission.",
        )

    def pause(self) -> None:
        """Stop the child and everything it started, so it cannot steal CPU while another
        contender is timed."""
        if not self.paused and self.process.poll() is None:
            self._stopped = proctree.signal_tree(self.process.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        # Nothing can fork while stopped, so the pids stopped are all the pids to continue.
        if self.paused:
            proctree.signal_pids(self._stopped, signal.SIGCONT)
            self.paused = False

    def close(self) -> None:
        self.resume()
        # No graceful exit: nothing the child still holds is wanted (what it printed is in the
        # log, line by line), and interpreter shutdown with torch loaded costs ~0.3 s per job.
        kill(self.process)
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        return safeio.read_tail(self.log_path, limit=limit)

    def _receive(self, *, timeout_s: float, doing: str) -> dict[str, Any]:
        return self._receive_frame(timeout_s=timeout_s, doing=doing)[0]

    def _receive_frame(
        self, *, timeout_s: float, doing: str
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        try:
            return self._reader.read(deadline=time.monotonic() + timeout_s)
        except Deadline:
            raise HarnessFailure(
                "timeout",
                f"{self.subject} did not answer within {timeout_s:g} s while {doing}.",
            ) from None
        except PeerClosed:
            raise HarnessFailure("error", self._died(f"while {doing}")) from None
        except ProtocolError as exc:
            raise HarnessFailure(
                "error",
                f"{self.subject} wrote garbage to the grader's channel while {doing} ({exc}).",
            ) from None

    def _died(self, when: str) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=2)
        self.process.poll()
        ending = describe_end(self.process)
        return f"The process running {self.entry.label} {ending} {when}."

    def _load_failure(self, header: dict[str, Any]) -> str:
        reason = header.get("reason")
        if reason == "missing":
            defined = [str(n) for n in header.get("defined", [])][:10]
            also = f" (it defines: {', '.join(defined)})" if defined else ""
            return (
                f"Your solution cells do not define a function named "
                f"'{_text(header.get('name'))}'{also}."
            )
        if reason == "not_callable":
            return f"'{_text(header.get('name'))}' in your solution cells is not a function."
        return (
            f"Loading your solution cells raised {_text(header.get('type'))}{self._where(header)}: "
            f"{_text(header.get('message'))}"
        )

    def _where(self, header: dict[str, Any]) -> str:
        frames = header.get("frames")
        if not isinstance(frames, list) or not frames:
            return ""
        last = frames[-1]
        if not (isinstance(last, list) and last and isinstance(last[0], int)):
            return ""
        place = self.locate(last[0]) if self.locate else None
        if place:
            return f" in cell {place[0]}, line {place[1]}"
        return f" at line {last[0]} of {self.entry.file.name if self.entry.file else 'the code'}"


_BENCH_DOING = {
    "bench_setup": "receiving its timing inputs",
    "bench_calibrate": "calibrating the timer",
    "bench_block": "being timed",
    "bench_probe": "returning timed outputs for checking",
    "bench_wall": "being timed by the wall clock",
}


def _text(value: Any, limit: int = 300) -> str:
    return " ".join(str(value).split())[:limit]
