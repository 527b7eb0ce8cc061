"""`python -m vllm.entrypoints.openai.api_server` for the tests: records its arguments in
$FAKE_VLLM_ARGS (a file), then serves the fake OpenAI-compatible server on --port."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[5]))  # the repository root

from tests.runner.fake_openai_server import serving_in_thread  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
args, rest = parser.parse_known_args()
Path(os.environ["FAKE_VLLM_ARGS"]).write_text(json.dumps(sys.argv[1:]))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
with serving_in_thread(port=args.port):
    stop.wait()
