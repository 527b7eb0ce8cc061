"""This node's peaks, measured once and kept as JSON in a cache folder.

The file is named after, and holds, the key of what would change the peaks (GPU name, driver
and torch version; or CPU model, logical CPUs, torch threads and torch version). A file that is
unreadable, corrupt or made for another key is ignored with a warning and measured over, so a
driver upgrade or a copied-in file costs one measurement, never a wrong roofline.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from runner.measure.peaks import PEAKS_SCHEMA, Peaks, device_key, measure_peaks

log = logging.getLogger(__name__)


def load_or_measure_peaks(
    cache_dir: Path | str,
    device: str = "cuda",
    *,
    key: Mapping[str, Any] | None = None,
    measure: Callable[..., Peaks] | None = None,
    **options: Any,
) -> Peaks:
    """This node's peaks from `cache_dir`, measuring (and caching) them on first use.

    The cache file is named after `key` (default: device_key(device)) and holds that key; a
    file that cannot be read, is not valid, or holds another key is ignored with a warning
    and measured over. Measuring and writing happen under a lock in `cache_dir`, so two
    workers on one node measure once, not at the same time on the same device. `options` go
    to `measure` (default measure_peaks), e.g. copy_bytes, matmul_n, dtypes.
    """
    key = dict(key) if key is not None else device_key(device)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cache_filename(device, key)
    with _locked(folder / ".peaks.lock"):
        cached = _read_cache(path, key)
        if cached is not None:
            return cached
        peaks = (measure or measure_peaks)(device, **options)
        record = {"schema": PEAKS_SCHEMA, "key": key, "peaks": peaks.to_dict()}
        try:
            _write_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            log.warning("could not cache the measured peaks in %s (%s)", path, exc)
    return peaks


def cache_filename(device: str, key: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()
    kind = device.split(":", 1)[0]
    return f"peaks-{kind}-{digest[:16]}.json"


def _read_cache(path: Path, key: Mapping[str, Any]) -> Peaks | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.info("no cached peaks at %s: measuring this node", path)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("ignoring the peaks cache %s (unreadable: %s); measuring again", path, exc)
        return None
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or record.get("schema") != PEAKS_SCHEMA:
            raise ValueError(f"not a {PEAKS_SCHEMA} file")
        if record.get("key") != dict(key):
            raise ValueError(f"measured on {record.get('key')!r}, this node is {dict(key)!r}")
        return Peaks.from_dict(record.get("peaks"))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        log.warning("ignoring the peaks cache %s (%s); measuring again", path, exc)
        return None


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename it over `path`: a reader
    sees the old file or the new one, never half of one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
