"""The runner's command line.

`python -m runner grade softmax my.ipynb` grades a notebook locally, without a broker: for lab
authors and for debugging a worker node; it runs the same pipeline as the worker, with a random
seed, and prints the verdict (or the whole report with --json).

`python -m runner wheelhouse build --out wheelhouse --python-version 3.12 --platform
manylinux_2_28_x86_64` builds what an air-gapped node installs a worker from (see
runner/wheelhouse.py and docs/gpu-worker.md).

`python -m runner gpu-workers [--dry-run]` starts one worker per GPU of this node, each pinned
to its GPU and consuming the queues its GPU qualifies for (runner/gpu_workers.py).
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
    wheelhouse = commands.add_parser(
        "wheelhouse", help="build a wheelhouse for installing a worker without the network"
    )
    wheelhouse_commands = wheelhouse.add_subparsers(dest="wheelhouse_command", required=True)
    build = wheelhouse_commands.add_parser("build", help="download and build the wheelhouse")
    build.add_argument("--out", type=Path, default=Path("wheelhouse"))
    build.add_argument(
        "--python-version",
        default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="the node's Python, major.minor (default: this one)",
    )
    build.add_argument(
        "--platform",
        help="the node's platform tag, e.g. manylinux_2_28_x86_64 (default: this machine's); "
        "older manylinux tags are added",
    )
    build.add_argument(
        "--extras", default="worker", help="comma-separated extras of the project (worker)"
    )
    build.add_argument(
        "--include-torch",
        action="store_true",
        help="also download torch, triton and the nvidia-* CUDA wheels (several GB)",
    )
    build.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also leave out packages matching PATTERN (e.g. numpy, when the node has it)",
    )
    build.add_argument(
        "--no-debs", action="store_true", help="skip the bubblewrap and libcap2 .debs"
    )
    commands.add_parser(
        "gpu-workers",
        help="start one Celery worker per GPU of this node (see runner/gpu_workers.py)",
        add_help=False,
    )
    # The launcher parses its own options (runner/gpu_workers.py).
    args, rest = parser.parse_known_args(argv)
    if args.command == "gpu-workers":
        from runner import gpu_workers as launcher  # noqa: PLC0415 - needs pynvml

        return launcher.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "wheelhouse":
        return _build_wheelhouse(args)
    return _grade(args)


def _build_wheelhouse(args: argparse.Namespace) -> int:
    from runner import wheelhouse  # noqa: PLC0415 - grading needs none of it

    exclude = [*(() if args.include_torch else wheelhouse.TORCH_PATTERNS), *args.exclude]
    try:
        wheelhouse.build_wheelhouse(
            out=args.out,
            python_version=args.python_version,
            platform=args.platform or wheelhouse.local_platform(),
            extras=[e for e in args.extras.split(",") if e],
            exclude=exclude,
            debs=not args.no_debs,
        )
    except wheelhouse.WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 1
    return 0


def _grade(args: argparse.Namespace) -> int:
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
