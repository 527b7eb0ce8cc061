"""Grade a notebook locally, without a broker: `python -m runner grade softmax my.ipynb`.

For lab authors and for debugging a worker node; it runs the same pipeline as the worker,
with a random seed, and prints the verdict (or the whole report with --json).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

from runner.labspec import load_lab_spec, notebooks_root
from runner.notebook import NotebookRejected, validate_notebook
from runner.pipeline import run_job
from runner.schema import JOB_SCHEMA


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner")
    commands = parser.add_subparsers(dest="command", required=True)
    grade = commands.add_parser("grade", help="grade a notebook for a lab")
    grade.add_argument("lab")
    grade.add_argument("notebook", type=Path)
    grade.add_argument("--device-class", default="cpu", choices=("cpu", "gpu"))
    grade.add_argument("--json", action="store_true", help="print the whole report")
    args = parser.parse_args(argv)

    spec = load_lab_spec(notebooks_root() / args.lab)
    raw = args.notebook.read_bytes()
    try:
        validate_notebook(
            raw, max_bytes=spec.limits.max_notebook_bytes, max_cells=spec.limits.max_cells
        )
    except NotebookRejected as exc:
        print(f"rejected: {exc}")
        return 1
    job = {
        "schema": JOB_SCHEMA,
        "submission_id": f"local-{secrets.token_hex(4)}",
        "attempt": 1,
        "lab": spec.slug,
        "device_class": args.device_class,
        "notebook": json.loads(raw),
        "seed": secrets.token_hex(16),
        "limits": {
            "cell_timeout_s": spec.limits.cell_timeout_s,
            "total_timeout_s": spec.limits.total_timeout_s,
            "max_output_bytes": spec.limits.max_output_bytes,
        },
    }

    def show(stage: str, **info: object) -> None:
        print(f"  {stage} {info or ''}", file=sys.stderr)

    report = run_job(job, on_progress=show)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0 if report["status"] == "passed" else 1
    print(f"{report['status']}: {report['message']}")
    for criterion in report["criteria"]:
        mark = "PASS" if criterion["passed"] else ("FAIL" if criterion["evaluated"] else "n/a ")
        print(
            f"  {mark} {criterion['name']}: {criterion['measured']} {criterion['unit']} "
            f"(needs {criterion['comparator']} {criterion['threshold']})"
        )
    for mismatch in report["mismatches"][:5]:
        print(f"  mismatch: {mismatch}")
    return 0 if report["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
