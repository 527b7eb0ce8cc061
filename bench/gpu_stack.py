"""The whole stack on a GPU node (issue 11): web app, web worker + beat, one grading worker per
GPU (`python -m runner gpu-workers`), SQLite and the filesystem broker, learners' notebooks
submitted through the JSON API with device_class=gpu.

Two passes over the same notebooks (every GPU lab's reference, starter and known-wrong ones):

1. **one at a time**: submit, wait for the verdict, submit the next. Per submission:
   overhead = (recorded finish - upload) - (cells' own run time) - (grader time).
2. **all at once** (a burst): every notebook queued together, so each worker always has a
   job waiting. The GPU idle fraction between jobs = the time a worker spent with no job
   running, between its first start and its last finish, over that span; NVML utilisation is
   sampled at 10 Hz alongside, for each GPU.

Then the fleet page as an instructor sees it (HTML) and the recorded heartbeats (JSON).

    OUT=$OUT python bench/gpu_stack.py [--labs softmax,kernels,...] [--kinds reference,starter]
        [--sequential all|references|none] [--share N]

Everything goes to $OUT/stack/: results.json, summary.md, fleet.html, workers.json and
each process's log. Needs a node where `wheelhouse/install.py` installed the worker (and
with it Django) into the Python running this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline_overhead import cells_seconds, parse_time  # noqa: E402
from tests.e2e.stack import Stack  # noqa: E402

LEARNER = "0123456789abcdef0123456789abcdef"
# What each lab's notebooks should get on a GPU: the reference, the untouched starter and one
# known-wrong answer per GPU lab (tests/runner/test_gpu_*.py run the rest of the fixtures).
NOTEBOOKS = {
    "softmax": [
        ("reference.ipynb", "passed"),
        ("softmax.ipynb", "error"),
        ("fixtures/naive_overflow.ipynb", "failed"),
    ],
    "kernels": [
        ("reference.ipynb", "passed"),
        ("kernels.ipynb", "error"),
        ("fixtures/no_eps.ipynb", "failed"),
    ],
    "profiling": [
        ("reference.ipynb", "passed"),
        ("profiling.ipynb", "error"),
        ("fixtures/no_kv_cache.ipynb", "failed"),
    ],
    "quantization": [
        ("reference.ipynb", "passed"),
        ("quantization.ipynb", "error"),
        ("fixtures/per_tensor_int4.ipynb", "failed"),
    ],
    "serving": [
        ("reference.ipynb", "passed"),
        ("serving.ipynb", "error"),
        ("fixtures/static_like.ipynb", "failed"),
    ],
    "cost": [
        ("reference.ipynb", "passed"),
        ("cost.ipynb", "error"),
        ("fixtures/no_headroom.ipynb", "failed"),
    ],
}
KINDS = ("reference", "starter", "wrong")


def kind_of(notebook: str) -> str:
    if notebook == "reference.ipynb":
        return "reference"
    return "wrong" if notebook.startswith("fixtures/") else "starter"


class GpuStack(Stack):
    """The e2e stack with `python -m runner gpu-workers` as its grading worker."""

    share = 1

    def start_grading_worker(self) -> None:
        command = [sys.executable, "-m", "runner", "gpu-workers"]
        if self.share > 1:
            command += ["--share", str(self.share)]
        self._spawn("grading-worker", command)


class NvmlSampler(threading.Thread):
    """Utilisation, memory, power and SM clock of every GPU, every 0.1 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[dict] = []
        self.running = True
        self.handles: list = []
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # noqa: BLE001 - a CPU machine (the --device-class cpu dry run)
            return
        self.nvml = pynvml
        self.handles = [
            pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
        ]

    def run(self) -> None:
        nv = getattr(self, "nvml", None)
        while self.running and nv is not None:
            now = time.time()
            for index, handle in enumerate(self.handles):
                util = nv.nvmlDeviceGetUtilizationRates(handle)
                self.samples.append(
                    {
                        "t": now,
                        "gpu": index,
                        "util": util.gpu,
                        "mem_used": nv.nvmlDeviceGetMemoryInfo(handle).used,
                        "power_w": nv.nvmlDeviceGetPowerUsage(handle) / 1000,
                        "sm_mhz": nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM),
                    }
                )
            time.sleep(0.1)


def submit(stack: Stack, lab: str, notebook: str, device_class: str, learner: str = LEARNER) -> str:
    path = REPO / "notebooks" / lab / notebook
    return stack.submit(path, lab=lab, learner=learner, device_class=device_class)["id"]


def recorded(stack: Stack, ids: list[str]) -> dict[str, dict]:
    """Rows as the web side recorded them (report, worker, timestamps), through Django."""
    code = (
        "import json; from labs.models import Submission as S\n"
        "rows = {}\n"
        "for s in S.objects.filter(pk__in=IDS):\n"
        "    r = s.report or {}\n"
        "    rows[str(s.pk)] = {'status': s.status, 'worker': s.worker, 'message': s.message,\n"
        "        'created': s.created.isoformat(),\n"
        "        'started': s.started and s.started.isoformat(),\n"
        "        'finished': s.finished and s.finished.isoformat(), 'criteria': s.criteria,\n"
        "        'durations': r.get('durations') or {}, 'environment': r.get('environment'),\n"
        "        'cells': r.get('executed_notebook') or {}}\n"
        "print(json.dumps(rows))"
    ).replace("IDS", repr(ids))
    rows = json.loads(stack.manage("shell", "-v", "0", "-c", code).strip().splitlines()[-1])
    for row in rows.values():
        row["cells_s"] = cells_seconds(row.pop("cells"))
    return rows


def describe(row: dict, lab: str, notebook: str, expected: str) -> dict:
    total = parse_time(row["finished"]) - parse_time(row["created"])
    grade = row["durations"].get("grade", 0.0)
    return {
        "lab": lab,
        "notebook": notebook,
        "expected": expected,
        "status": row["status"],
        "worker": row["worker"],
        "message": row["message"][:300],
        "gpu": (row["environment"] or {}).get("gpu"),
        "upload_to_verdict_s": round(total, 3),
        "cells_s": round(row["cells_s"], 3),
        "grade_s": round(grade, 3),
        "overhead_s": round(total - row["cells_s"] - grade, 3),
        # Waiting for a worker (a burst queues) is not pipeline overhead; this is the rest.
        "queue_s": round(parse_time(row["started"]) - parse_time(row["created"]), 3),
        "overhead_after_start_s": round(
            parse_time(row["finished"]) - parse_time(row["started"]) - row["cells_s"] - grade, 3
        ),
        "started": row["started"],
        "finished": row["finished"],
        "criteria": [
            {k: c.get(k) for k in ("name", "measured", "threshold", "comparator", "passed")}
            | {"evaluated": c.get("evaluated", True)}
            for c in row["criteria"]
        ],
    }


def idle_fraction(rows: list[dict]) -> dict[str, dict]:
    """Per worker: the share of [first start, last finish] with no job of its running."""
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row["started"] and row["finished"]:
            span = (parse_time(row["started"]), parse_time(row["finished"]))
            by_worker.setdefault(row["worker"], []).append(span)
    result = {}
    for worker, spans in by_worker.items():
        spans.sort()
        busy = sum(end - start for start, end in spans)
        window = spans[-1][1] - spans[0][0]
        gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)]
        result[worker] = {
            "jobs": len(spans),
            "window_s": round(window, 3),
            "busy_s": round(busy, 3),
            "idle_fraction": round(1 - busy / window, 4) if window > 0 else None,
            "gaps_s": [round(g, 3) for g in gaps],
        }
    return result


def nvml_summary(samples: list[dict], start: float, end: float) -> dict[str, dict]:
    out = {}
    for gpu in sorted({s["gpu"] for s in samples}):
        window = [s for s in samples if s["gpu"] == gpu and start <= s["t"] <= end]
        if not window:
            continue
        out[str(gpu)] = {
            "samples": len(window),
            "util_zero_fraction": round(sum(s["util"] == 0 for s in window) / len(window), 4),
            "util_mean": round(statistics.fmean(s["util"] for s in window), 1),
            "power_w_max": round(max(s["power_w"] for s in window), 1),
            "sm_mhz_min": min(s["sm_mhz"] for s in window),
            "sm_mhz_max": max(s["sm_mhz"] for s in window),
        }
    return out


def fleet_snapshot(stack: Stack, out: Path) -> None:
    """The fleet page as a logged-in instructor gets it, and the workers' records."""
    code = (
        "import json, tomllib; from decimal import Decimal\n"
        "from django.contrib.auth import get_user_model\n"
        "from django.test import Client\n"
        "from labs.fleet_costs import GpuPrice\n"
        "from labs.workers import Worker\n"
        # The catalogue's hourly prices (an assumption, runner/cost/catalogue.toml), so that the
        # page shows its cost figures; an operator sets real ones on the page.
        "for gpu in tomllib.load(open('runner/cost/catalogue.toml', 'rb')).get('gpu', []):\n"
        "    for name in gpu.get('nvml_names', []):\n"
        "        GpuPrice.objects.update_or_create(gpu_model=name, "
        "defaults={'usd_per_hour': Decimal(str(gpu['price_per_hour']))})\n"
        "u, _ = get_user_model().objects.get_or_create(username='bench', "
        "defaults={'is_staff': True})\n"
        "c = Client(); c.force_login(u)\n"
        "open(OUT + '/fleet.html', 'wb').write(c.get('/fleet/', HTTP_HOST='127.0.0.1').content)\n"
        "rows = [{'name': w.name, 'node': w.node, 'queues': w.queues, 'last_seen': "
        "w.last_seen.isoformat(), 'payload': w.payload} for w in Worker.objects.all()]\n"
        "open(OUT + '/workers.json', 'w').write(json.dumps(rows, indent=1, default=str))\n"
    ).replace("OUT", repr(str(out)))
    stack.manage("shell", "-v", "0", "-c", code)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labs", default=",".join(NOTEBOOKS))
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="which of each lab's notebooks to submit: reference, starter, wrong",
    )
    parser.add_argument(
        "--share", type=int, default=1, help="gpu-workers --share N (jobs per GPU at once)"
    )
    parser.add_argument(
        "--device-class",
        default="gpu",
        choices=("gpu", "cpu"),
        help="cpu: a dry run of this script on a machine without a GPU (the CPU worker)",
    )
    parser.add_argument(
        "--sequential",
        choices=("all", "references", "none"),
        default="all",
        help="which notebooks the one-at-a-time pass submits (the burst always sends all)",
    )
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "var/gpu-node")) / "stack"
    out.mkdir(parents=True, exist_ok=True)
    kinds = set(args.kinds.split(","))
    plan = [
        (lab, nb, exp)
        for lab in args.labs.split(",")
        for nb, exp in NOTEBOOKS[lab]
        if kind_of(nb) in kinds
    ]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    sampler = NvmlSampler()
    sampler.start()
    limits = {"SUBMISSIONS_PER_LEARNER_PER_HOUR": "10000", "SUBMISSIONS_PER_IP_PER_HOUR": "10000"}
    kind = GpuStack if args.device_class == "gpu" else Stack
    stack = kind(mode="embedded", workdir=out / "run", extra_env=limits)
    stack.share = args.share
    results: dict = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "node": platform.node(),
        "command": " ".join(sys.argv),
        "share": args.share,
    }
    t_start = time.time()
    stack.start()
    try:
        results["startup_s"] = round(time.time() - t_start, 1)
        sequential = []
        for lab, notebook, expected in plan:
            if args.sequential == "none" or (
                args.sequential == "references" and notebook != "reference.ipynb"
            ):
                continue
            sid = submit(stack, lab, notebook, args.device_class)
            stack.wait(sid, timeout=420)
            row = recorded(stack, [sid])[sid]
            sequential.append(describe(row, lab, notebook, expected))
            print(f"one at a time: {lab}/{notebook}: {row['status']} (expected {expected})")
        results["one_at_a_time"] = sequential

        burst_start = time.time()
        # As a class would: each learner sends one notebook, all at once.
        ids = [
            (submit(stack, lab, nb, args.device_class, learner=f"{i + 1:032x}"), lab, nb, exp)
            for i, (lab, nb, exp) in enumerate(plan)
        ]
        try:
            for sid, *_ in ids:
                stack.wait(sid, timeout=900)
        finally:
            # Also when cut short (a time limit): the verdicts that came are kept.
            burst_end = time.time()
            rows = recorded(stack, [sid for sid, *_ in ids])
            burst = [
                describe(rows[sid], lab, nb, exp)
                if rows[sid]["finished"]
                else {"lab": lab, "notebook": nb, "expected": exp, "status": rows[sid]["status"]}
                for sid, lab, nb, exp in ids
            ]
            results["burst"] = burst
            results["burst_wall_s"] = round(burst_end - burst_start, 2)
            results["burst_idle"] = idle_fraction([r for r in burst if "started" in r])
            results["burst_nvml"] = nvml_summary(sampler.samples, burst_start, burst_end)
        time.sleep(6)  # one more heartbeat each, so the page shows the jobs done
        try:
            fleet_snapshot(stack, out)
        except Exception as exc:  # noqa: BLE001 - the verdicts above matter more than the page
            results["fleet_error"] = str(exc)[-2000:]
    finally:
        # Also after a timeout (SIGTERM, below): what was measured so far is kept.
        sampler.running = False
        stack.stop()
        for name in stack.processes:
            # Whole, not the tail stack.log() gives: the launcher's first lines say how the
            # node's CPUs were shared out among the GPUs' workers.
            log = stack.workdir / f"{name}.log"
            if log.exists():
                shutil.copyfile(log, out / f"{name}.log")
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "summary.md").write_text(render(results))
    print(render(results))
    every = results["one_at_a_time"] + results["burst"]
    return 0 if all(r["status"] == r["expected"] for r in every) else 1


def render(results: dict) -> str:
    lines = [f"# Whole stack on {results['node']}, {results['date']}", ""]
    lines += [
        "| pass | lab | notebook | verdict | expected | worker | upload→verdict s | cells s "
        "| grader s | overhead s | of which queued s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("one_at_a_time", "burst"):
        for r in results.get(name, []):
            if "worker" not in r:
                lines.append(
                    f"| {name} | {r['lab']} | {r['notebook']} | {r['status']} (unfinished) "
                    f"| {r['expected']} | | | | | | |"
                )
                continue
            lines.append(
                f"| {name} | {r['lab']} | {r['notebook']} | {r['status']} | {r['expected']} | "
                f"{r['worker']} | {r['upload_to_verdict_s']} | {r['cells_s']} | {r['grade_s']} "
                f"| {r['overhead_s']} | {r['queue_s']} |"
            )
    lines += ["", f"burst wall time: {results.get('burst_wall_s')} s", ""]
    for worker, idle in (results.get("burst_idle") or {}).items():
        lines.append(f"- {worker}: {idle}")
    for gpu, nv in (results.get("burst_nvml") or {}).items():
        lines.append(f"- NVML GPU {gpu}: {nv}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
