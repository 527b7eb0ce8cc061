"""The hardware catalogue: GPU models with memory, bandwidth, FLOP/s and an hourly price, and
the engine assumptions that turn datasheet figures into step times (catalogue.toml).

A catalogue also travels as plain data (`to_plain`, `from_plain`): that is what a learner's
plan function receives, and what the notebook's copy of the simulator reads. The grader
always uses its own copy: a plan names a GPU, and its figures come from here.

Where a worker has measured its own GPU (runner.measure.node_peaks), `node_entry` turns the
cached peaks into one more entry, "this-node", with the measured bandwidth and matmul rates.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

CATALOGUE_FILE = "catalogue.toml"  # next to this module

# Bytes per weight and per KV-cache element. fp8 means fp8 weights and an fp8 KV cache (vLLM's
# --quantization fp8 with --kv-cache-dtype fp8); it runs on the fp8 tensor cores.
PRECISION_BYTES = MappingProxyType({"bf16": 2, "fp8": 1})

ASSUMPTIONS = (
    "memory_efficiency",
    "compute_efficiency",
    "step_overhead_s",
    "memory_utilisation",
    "tensor_parallel_efficiency",
    "max_prefill_tokens",
)
_GPU_NUMBERS = ("memory_bytes", "bandwidth_bytes_per_s", "price_per_hour")
_GPU_KEYS = {
    "name",
    "basis",
    "memory_bytes",
    "bandwidth_bytes_per_s",
    "flops_per_s",
    "max_gpus_per_replica",
    "price_per_hour",
    "nvml_names",
    "source",
    "price_source",
}
BASES = ("datasheet", "measured")


class CatalogueError(ValueError):
    """A catalogue that cannot be used; the message names the entry and the field."""


@dataclass(frozen=True)
class Gpu:
    name: str
    basis: str  # "datasheet" or "measured"
    memory_bytes: float
    bandwidth_bytes_per_s: float
    flops_per_s: Mapping[str, float]  # dense, per precision name ("bf16", "fp8")
    max_gpus_per_replica: int
    price_per_hour: float  # an assumption: see catalogue.toml
    nvml_names: tuple[str, ...] = ()
    source: str = ""
    price_source: str = ""

    def supports(self, precision: str) -> bool:
        return precision in self.flops_per_s

    def to_plain(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "basis": self.basis,
            "memory_bytes": self.memory_bytes,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "flops_per_s": dict(self.flops_per_s),
            "max_gpus_per_replica": self.max_gpus_per_replica,
            "price_per_hour": self.price_per_hour,
            "nvml_names": list(self.nvml_names),
            "source": self.source,
            "price_source": self.price_source,
        }


@dataclass(frozen=True)
class Assumptions:
    memory_efficiency: float
    compute_efficiency: float
    step_overhead_s: float
    memory_utilisation: float
    tensor_parallel_efficiency: float
    max_prefill_tokens: int
    sources: Mapping[str, str] = field(default_factory=dict)

    def to_plain(self) -> dict[str, Any]:
        return {
            name: {"value": getattr(self, name), "source": self.sources.get(name, "")}
            for name in ASSUMPTIONS
        }


@dataclass(frozen=True)
class Catalogue:
    gpus: Mapping[str, Gpu]
    assumptions: Assumptions

    def gpu(self, name: str) -> Gpu:
        try:
            return self.gpus[name]
        except KeyError:
            raise CatalogueError(
                f"unknown GPU {name!r}; the catalogue has: {', '.join(sorted(self.gpus))}"
            ) from None

    def with_gpu(self, gpu: Gpu) -> Catalogue:
        return replace(self, gpus=MappingProxyType({**self.gpus, gpu.name: gpu}))

    def to_plain(self) -> dict[str, Any]:
        """What a plan function receives: JSON data, every figure with its source."""
        return {
            "gpus": {name: gpu.to_plain() for name, gpu in self.gpus.items()},
            "assumptions": self.assumptions.to_plain(),
            "precision_bytes": dict(PRECISION_BYTES),
        }

    @classmethod
    def from_plain(cls, data: Mapping[str, Any], *, where: str = "catalogue") -> Catalogue:
        """From to_plain()'s shape or catalogue.toml's; CatalogueError naming the field."""
        if not isinstance(data, Mapping):
            raise CatalogueError(f"{where}: must be a table")
        raw_gpus = data.get("gpus", data.get("gpu"))
        if isinstance(raw_gpus, Mapping):
            raw_gpus = [{"name": name, **entry} for name, entry in raw_gpus.items()]
        if not isinstance(raw_gpus, list) or not raw_gpus:
            raise CatalogueError(f"{where}: needs at least one GPU")
        gpus: dict[str, Gpu] = {}
        for raw in raw_gpus:
            gpu = _gpu(raw, where)
            if gpu.name in gpus:
                raise CatalogueError(f"{where}: GPU {gpu.name} is listed twice")
            gpus[gpu.name] = gpu
        return cls(gpus=MappingProxyType(gpus), assumptions=_assumptions(data, where))


def load_catalogue(path: Path | str | None = None) -> Catalogue:
    """catalogue.toml (or the file at `path`), validated."""
    path = Path(path) if path is not None else Path(__file__).resolve().parent / CATALOGUE_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"{path}: cannot be read ({exc})") from None
    return Catalogue.from_plain(raw, where=str(path))


def node_entry(peaks: Any, catalogue: Catalogue, *, name: str = "this-node") -> Gpu | None:
    """A catalogue entry for the GPU this worker measured (a runner.measure.peaks.Peaks):
    the measured copy bandwidth and matmul FLOP/s; memory, GPUs per replica and price from
    the catalogue entry whose `nvml_names` holds the card's name. None when the peaks are not
    a GPU's, or the card is not in the catalogue (then its price is unknown)."""
    device = getattr(peaks, "device", {}) or {}
    if device.get("kind") != "cuda":
        return None
    card = str(device.get("name", ""))
    like = next((g for g in catalogue.gpus.values() if card in g.nvml_names), None)
    if like is None:
        return None
    flops = {
        precision: float(rate)
        for precision, rate in peaks.flops_per_s.items()
        if precision in PRECISION_BYTES
    }
    if not flops:
        return None
    return Gpu(
        name=name,
        basis="measured",
        memory_bytes=like.memory_bytes,
        bandwidth_bytes_per_s=float(peaks.memory_bytes_per_s),
        flops_per_s=MappingProxyType(flops),
        max_gpus_per_replica=like.max_gpus_per_replica,
        price_per_hour=like.price_per_hour,
        nvml_names=(card,),
        source=(
            f"measured on this worker ({card}, driver {device.get('driver')}, torch "
            f"{device.get('torch')}) at {peaks.measured_at} by runner.measure.node_peaks: "
            f"{peaks.method} Memory, GPUs per replica and price as {like.name}."
        ),
        price_source=f"as {like.name}: {like.price_source}",
    )


def _number(value: Any, what: str, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogueError(f"{what} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise CatalogueError(f"{what} must be positive")
    if integer and (not float(value).is_integer()):
        raise CatalogueError(f"{what} must be a whole number")
    return int(value) if integer else float(value)


def _gpu(raw: Any, where: str) -> Gpu:
    if not isinstance(raw, Mapping):
        raise CatalogueError(f"{where}: every GPU must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CatalogueError(f"{where}: a GPU needs a name")
    at = f"{where}: GPU {name}"
    unknown = set(raw) - _GPU_KEYS
    if unknown:
        raise CatalogueError(f"{at}: unknown field(s) {sorted(unknown)}")
    basis = raw.get("basis", "datasheet")
    if basis not in BASES:
        raise CatalogueError(f"{at}: basis must be one of {BASES}")
    numbers = {key: _number(raw.get(key), f"{at}: {key}") for key in _GPU_NUMBERS}
    flops = raw.get("flops_per_s")
    if not isinstance(flops, Mapping) or not flops:
        raise CatalogueError(f"{at}: flops_per_s must be a table like {{bf16 = 989e12}}")
    rates = {}
    for precision, rate in flops.items():
        if precision not in PRECISION_BYTES:
            raise CatalogueError(
                f"{at}: flops_per_s.{precision} is not a precision ({', '.join(PRECISION_BYTES)})"
            )
        rates[precision] = _number(rate, f"{at}: flops_per_s.{precision}")
    nvml = raw.get("nvml_names", [])
    if not isinstance(nvml, list | tuple) or not all(isinstance(n, str) for n in nvml):
        raise CatalogueError(f"{at}: nvml_names must be a list of strings")
    if not str(raw.get("source", "")).strip():
        raise CatalogueError(f"{at}: every entry needs a source")
    return Gpu(
        name=name,
        basis=basis,
        flops_per_s=MappingProxyType(rates),
        max_gpus_per_replica=_number(
            raw.get("max_gpus_per_replica", 1), f"{at}: max_gpus_per_replica", integer=True
        ),
        nvml_names=tuple(nvml),
        source=str(raw.get("source", "")),
        price_source=str(raw.get("price_source", "")),
        **numbers,
    )


def _assumptions(data: Mapping[str, Any], where: str) -> Assumptions:
    raw = data.get("assumptions")
    if not isinstance(raw, Mapping):
        raise CatalogueError(f"{where}: the [assumptions] table is missing")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in ASSUMPTIONS:
        entry = raw.get(name)
        if isinstance(entry, Mapping):
            value, sources[name] = entry.get("value"), str(entry.get("source", ""))
        else:
            value = entry
        values[name] = _number(
            value, f"{where}: assumptions.{name}", integer=name == "max_prefill_tokens"
        )
        if name.endswith(("efficiency", "utilisation")) and values[name] > 1:
            raise CatalogueError(f"{where}: assumptions.{name} is a fraction, at most 1")
    return Assumptions(**values, sources=MappingProxyType(sources))
