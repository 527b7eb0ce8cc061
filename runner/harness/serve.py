"""The child side of the harness: load one function, then serve calls to it over a pipe.

Runs inside the sandbox. The same code serves the learner's function (the *candidate*, from
solution.py) and the trusted baseline (from a runner module), so that both pay exactly the
same process, protocol and conversion costs when the trusted side times them.

Before any learner code is imported, the protocol pipes are moved off fds 0 and 1 and stdout
is pointed at stderr: whatever the learner prints lands in the log, never in the protocol.
The learner can still find and write to the pipe on purpose; the trusted side then sees
garbage and says so. Nothing the child reports is believed beyond the arrays it returns,
which the trusted side checks itself.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

MAX_MESSAGE = 500


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="runner.harness.serve")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="a learner's solution.py")
    source.add_argument("--trusted", help="module:function of trusted code")
    parser.add_argument("--function", help="the name to call in --file")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--adapter",
        help="module:function of trusted code that calls the served function for 'call_json'",
    )
    args = parser.parse_args(argv)

    proto_in, proto_out = os.dup(0), os.dup(1)  # os.dup makes them non-inheritable
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import numpy as np
    import torch

    from runner.harness.protocol import FrameReader, PeerClosed, write_frame

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    def send(header: dict[str, Any], arrays: Sequence[Any] = ()) -> None:
        write_frame(proto_out, header, arrays)

    # Before any learner code: the clocks and events the bench uses, and the snapshot of
    # every name a cheat would replace (runner.measure.device_timing says why).
    from runner.measure import device_timing

    backend = device_timing.backend_for(args.device)
    watch = device_timing.TamperWatch()
    adapter = _load_adapter(args.adapter)

    loaded = _load(args)
    if isinstance(loaded, dict):
        send(loaded)
        return 3
    function = loaded
    bench = device_timing.DeviceBench(backend, function)
    send(
        {
            "op": "ready",
            "pid": os.getpid(),
            "torch": torch.__version__,
            "tampered": watch.changed(),
        }
    )

    # The caller bounds message size; a generous cap here only guards against a broken parent.
    reader = FrameReader(proto_in, max_payload_bytes=1 << 34)
    while True:
        try:
            header, arrays = reader.read(deadline=None)
        except PeerClosed:
            return 0
        op = header.get("op")
        if op == "exit":
            return 0
        call_id = header.get("id")
        if isinstance(op, str) and op.startswith("bench_"):
            try:
                reply, arrays_out = _bench(bench, op, header, arrays)
            except BaseException as exc:  # noqa: BLE001 - the learner's code runs in there
                send({"op": "raised", "id": call_id, **_describe(exc, args.file)})
                continue
            send({"op": "bench", "id": call_id, "tampered": watch.changed(), **reply}, arrays_out)
            continue
        if op == "call_json":
            send(*_call_json(adapter, function, header, call_id, args.file, watch))
            continue
        inputs = [torch.from_numpy(a) for a in arrays]
        if args.device == "cuda":
            inputs = [t.to("cuda") for t in inputs]
            torch.cuda.synchronize()
        scalars = _scalars(header)
        try:
            result = function(*inputs, *scalars)
            if args.device == "cuda":
                torch.cuda.synchronize()
        except BaseException as exc:  # noqa: BLE001 - the learner's sys.exit() is an error too
            send({"op": "raised", "id": call_id, **_describe(exc, args.file)})
            continue
        outputs = result if isinstance(result, tuple | list) else [result]
        bad = [type(o).__name__ for o in outputs if not isinstance(o, torch.Tensor)]
        if bad or not outputs:
            send({"op": "bad_return", "id": call_id, "type": type(result).__name__})
            continue
        try:
            arrays_out = [o.detach().cpu().contiguous().numpy() for o in outputs]
        except TypeError as exc:  # e.g. bfloat16, which numpy has no dtype for
            send({"op": "bad_return", "id": call_id, "type": f"tensor ({exc})"})
            continue
        send(
            {"op": "result", "id": call_id, "tampered": watch.changed()},
            [np.ascontiguousarray(a) for a in arrays_out],
        )


def _load_adapter(name: str | None) -> Callable[..., Any] | None:
    """Trusted code, imported before the learner's: it builds what the learner's function is
    called with (a model, a workload) and turns its answer into plain JSON."""
    if not name:
        return None
    module_name, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _call_json(
    adapter: Callable[..., Any] | None,
    function: Callable[..., Any],
    header: dict[str, Any],
    call_id: Any,
    filename: str | None,
    watch: Any,
) -> tuple[dict[str, Any], list[Any]]:
    """One 'call_json' request: (the reply header with the answer in "result", arrays).

    With an adapter, `adapter(function, request)` makes the call and returns the answer, or
    (answer, list of numpy arrays) to send bytes too (a trace file); without one, the
    request's "args" and "kwargs" are passed as they are. Either way the answer must survive
    json.dumps (no NaN): what the trusted side gets is data, never objects.
    """
    request = header.get("request")
    if not isinstance(request, dict):
        request = {}
    try:
        arrays: list[Any] = []
        if adapter is not None:
            result = adapter(function, request)
            if isinstance(result, tuple):
                result, arrays = result
        else:
            result = function(*request.get("args", []), **request.get("kwargs", {}))
    except BaseException as exc:  # noqa: BLE001 - the learner's code runs in there
        return {"op": "raised", "id": call_id, **_describe(exc, filename)}, []
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        kind = f"{type(result).__name__} ({str(exc)[:MAX_MESSAGE]})"
        return {"op": "bad_return", "id": call_id, "type": kind}, []
    reply = {"op": "json_result", "id": call_id, "tampered": watch.changed(), "result": result}
    return reply, arrays


def _bench(
    bench: Any, op: str, header: dict[str, Any], arrays: list[Any]
) -> tuple[dict[str, Any], list[Any]]:
    """One bench request (runner.harness.bench is the other side): (reply header, arrays)."""
    if op == "bench_setup":
        count = int(header["sets"])
        per_set = len(arrays) // count
        sets = [arrays[i * per_set : (i + 1) * per_set] for i in range(count)]
        return bench.setup(
            sets, flush_bytes=header.get("flush_bytes"), scalars=_scalars(header)
        ), []
    if op == "bench_calibrate":
        return bench.calibrate(int(header["count"])), []
    if op == "bench_block":
        return bench.block(header["plan"], arrays), []
    if op == "bench_probe":
        return {}, bench.probe(header["outputs"], header["inputs"])
    if op == "bench_wall":
        bench.wall(int(header["set"]), int(header["count"]))
        return {}, []
    raise ValueError(f"unknown bench request {op!r}")


def _scalars(header: dict[str, Any]) -> list[float | int]:
    """Plain numbers the trusted side passes after the arrays (e.g. an epsilon)."""
    values = header.get("scalars") or []
    return [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def _load(args: argparse.Namespace) -> Callable[..., Any] | dict[str, Any]:
    """The function to serve, or a load_failed message saying why there is none."""
    try:
        if args.trusted:
            module_name, _, name = args.trusted.partition(":")
            module = importlib.import_module(module_name)
        else:
            name = args.function
            spec = importlib.util.spec_from_file_location("solution", args.file)
            module = importlib.util.module_from_spec(spec)
            sys.modules["solution"] = module
            spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - report every way the import can fail
        return {"op": "load_failed", "reason": "raised", **_describe(exc, args.file)}
    function = getattr(module, name, None)
    if function is None:
        defined = sorted(
            n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
        )[:20]
        return {"op": "load_failed", "reason": "missing", "name": name, "defined": defined}
    if not callable(function):
        return {"op": "load_failed", "reason": "not_callable", "name": name}
    return function


def _describe(exc: BaseException, filename: str | None) -> dict[str, Any]:
    frames = [
        [frame.lineno, frame.name]
        for frame in traceback.extract_tb(exc.__traceback__)
        if filename and frame.filename == filename
    ]
    traceback.print_exception(exc, file=sys.stderr)
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:MAX_MESSAGE],
        "frames": frames[-5:],
    }
