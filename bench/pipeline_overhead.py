"""Pipeline overhead on the embedded default (issue: lab submissions end to end).

Starts the real stack (runserver, web worker + beat, grading worker; SQLite and the
filesystem broker, as `make run` does), submits a trivial notebook N times one after another
through the JSON API, and reports, per submission:

    overhead = (recorded finish - upload) - (time the notebook's cells ran) - (grader time)

The cells' time comes from nbclient's own per-cell timestamps in the executed notebook
(`metadata.execution`), the grader's from the report's `durations.grade`. The rest is what the
pipeline itself costs: the broker hops, sandbox and kernel start, validation and recording.

    .venv/bin/python bench/pipeline_overhead.py [-n 30] [--out docs/benchmarks/pipeline-overhead.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.stack import Stack  # noqa: E402

LEARNER = "0123456789abcdef0123456789abcdef"


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def cells_seconds(notebook: dict) -> float:
    """Sum of the cells' execution times as nbclient recorded them."""
    total = 0.0
    for cell in notebook.get("cells", []):
        timing = cell.get("metadata", {}).get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if start and end:
            total += parse_time(end) - parse_time(start)
    return total


def trivial_notebook(folder: Path) -> Path:
    """The reference solution alone: one solution cell, nothing else to run."""
    reference = json.loads((REPO / "notebooks/softmax/reference.ipynb").read_text())
    reference["cells"] = [
        c for c in reference["cells"] if "solution" in c.get("metadata", {}).get("tags", [])
    ]
    path = folder / "trivial.ipynb"
    path.write_text(json.dumps(reference))
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--out", type=Path, help="write a markdown report here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # The benchmark is one learner submitting far more than a learner may in an hour.
        limits = {
            "SUBMISSIONS_PER_LEARNER_PER_HOUR": "10000",
            "SUBMISSIONS_PER_IP_PER_HOUR": "10000",
        }
        stack = Stack(mode="embedded", workdir=Path(tmp) / "stack", extra_env=limits)
        stack.start()
        try:
            notebook = trivial_notebook(Path(tmp))
            # One warm-up submission: first imports fill the page cache.
            stack.wait(stack.submit(notebook, lab="softmax", learner=LEARNER)["id"])
            for i in range(args.n):
                t0 = time.time()
                sid = stack.submit(notebook, lab="softmax", learner=LEARNER)["id"]
                final = stack.wait(sid, timeout=300)
                observed = time.time() - t0
                sub = _submission(stack, sid)
                report = sub["report"]
                total = parse_time(sub["finished"]) - parse_time(sub["created"])
                cells = cells_seconds(report["executed_notebook"] or {})
                durations = report["durations"]
                rows.append(
                    {
                        "status": final["status"],
                        "observed": observed,
                        "total": total,
                        "cells": cells,
                        "grade": durations.get("grade", 0.0),
                        "overhead": total - cells - durations.get("grade", 0.0),
                        "queue": parse_time(sub["started"]) - parse_time(sub["created"]),
                        "validate": durations.get("validate", 0.0),
                        "execute_minus_cells": durations.get("execute", 0.0) - cells,
                    }
                )
                print(f"{i + 1:3d} {final['status']:7s} overhead {rows[-1]['overhead']:.3f} s")
        finally:
            stack.stop()

    text = render(rows, args.n)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if all(r["status"] == "passed" for r in rows) else 1


def _submission(stack: Stack, sid: str) -> dict:
    """The recorded row (report included), read through Django in a subprocess."""
    code = (
        "import json; from labs.models import Submission as S; s = S.objects.get(pk=SID); "
        "print(json.dumps({'report': s.report, 'created': s.created.isoformat(), "
        "'started': s.started.isoformat(), 'finished': s.finished.isoformat()}))"
    ).replace("SID", repr(sid))
    out = stack.manage("shell", "-v", "0", "-c", code)
    return json.loads(out.strip().splitlines()[-1])


def render(rows: list[dict], n: int) -> str:
    def line(name: str, key: str) -> str:
        values = [r[key] for r in rows]
        return (
            f"| {name} | {statistics.median(values):.3f} | {percentile(values, 0.95):.3f} "
            f"| {min(values):.3f} | {max(values):.3f} |"
        )

    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return "\n".join(
        [
            "# Pipeline overhead on the embedded default",
            "",
            f"- date: {datetime.now().strftime('%Y-%m-%d %H:%M')} UTC",
            f"- machine: {platform.node()}, {cpu} cores, Python {platform.python_version()}",
            "- stack: runserver + web worker (beat) + grading worker, SQLite, filesystem broker,",
            "  bubblewrap sandbox; submissions one after another through the JSON API",
            f"- n = {n} submissions of a trivial notebook (the softmax reference's solution cell "
            "alone), after one warm-up",
            "- command: `.venv/bin/python bench/pipeline_overhead.py -n 30 "
            "--out docs/benchmarks/pipeline-overhead.md`",
            "",
            "overhead = (recorded finish - upload) - (cells' own run time) - (grader time)",
            "",
            "| seconds | p50 | p95 | min | max |",
            "|---|---|---|---|---|",
            line("**overhead**", "overhead"),
            line("upload to final, as the client saw it", "observed"),
            line("upload to recorded finish (server)", "total"),
            line("cells' own run time (nbclient timestamps)", "cells"),
            line("grader (correctness + timing)", "grade"),
            line(
                "where overhead goes: upload to first progress (queue, broker hop, worker start)",
                "queue",
            ),
            line("where overhead goes: validate + sanitise", "validate"),
            line(
                "where overhead goes: sandbox + kernel start-up (execute minus cells)",
                "execute_minus_cells",
            ),
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
