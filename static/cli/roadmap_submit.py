#!/usr/bin/env python3
"""Submit a lab notebook to an Inference Roadmap site and wait for its verdict.

Needs only Python 3.8+'s standard library:

    python roadmap_submit.py --server http://127.0.0.1:8000 --lab softmax \\
        --learner 0123456789abcdef0123456789abcdef softmax.ipynb

Your learner key is in your exported progress file ("learner_key"). Exit status: 0 passed,
1 failed/error/timeout/rejected, 2 refused by the server or bad usage, 3 gave up waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

FINAL = {"passed", "failed", "error", "timeout", "rejected"}


def multipart(fields: dict, file_field: str, path: Path):
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        header = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(header.encode() + str(value).encode() + b"\r\n")
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
        f'filename="{path.name}"\r\nContent-Type: application/x-ipynb+json\r\n\r\n'.encode()
        + path.read_bytes()
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(url: str, data: bytes | None = None, content_type: str | None = None) -> dict:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    req.add_header("Accept", "application/json")
    if content_type:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.load(response)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--lab", required=True, help="lab slug, e.g. softmax")
    parser.add_argument("--learner", required=True, help="your 32-character learner key")
    parser.add_argument("--wait", type=float, default=900, help="seconds to wait (0: don't)")
    args = parser.parse_args(argv)
    if not args.notebook.is_file():
        print(f"error: {args.notebook} is not a file", file=sys.stderr)
        return 2

    server = args.server.rstrip("/")
    body, content_type = multipart({"learner": args.learner}, "notebook", args.notebook)
    try:
        created = request(f"{server}/api/v1/labs/{args.lab}/submissions", body, content_type)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc)
            message = detail.get("message", exc.reason)
        except ValueError:
            message = exc.reason
        print(f"refused ({exc.code}): {message}", file=sys.stderr)
        return 2
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {server}: {exc.reason}", file=sys.stderr)
        return 2
    print(f"submitted: {created['url']}")
    if created.get("message"):  # e.g. the grading service is unreachable: it is sent later
        print(created["message"])
    if args.wait <= 0:
        return 0

    deadline = time.monotonic() + args.wait
    last = None
    while time.monotonic() < deadline:
        status = request(created["status_url"])
        line = status["status"] + (f" ({status['stage']})" if status.get("stage") else "")
        if line != last:
            print(line)
            last = line
        if status["status"] in FINAL:
            print(status["message"])
            for c in status["criteria"]:
                print(f"  {criterion_line(c, status.get('device_class', ''))}")
            return 0 if status["status"] == "passed" else 1
        time.sleep(1.0)
    print(f"gave up waiting after {args.wait:.0f} s; see {created['url']}", file=sys.stderr)
    return 3


def criterion_line(c: dict, device_class: str) -> str:
    """'[PASS] speed: 1.3 >= 0.8', or '[-] speed: not evaluated on cpu'."""
    if not c.get("evaluated", True):
        return f"[-] {c['name']}: not evaluated on {device_class or 'this device'}"
    mark = "PASS" if c["passed"] else "FAIL"
    measured = "not measured" if c["measured"] is None else c["measured"]
    return f"[{mark}] {c['name']}: {measured} {c['comparator']} {c['threshold']}"


if __name__ == "__main__":
    sys.exit(main())
