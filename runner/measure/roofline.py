"""Judge a measured time against this node's roofline, and draw it.

A lab declares, for a shape, the bytes its kernel must move and the FLOPs it must do (a
`Workload`). With the node's measured peaks (runner.measure.peaks) that gives a floor: no
kernel can finish in less than max(bytes / bandwidth, FLOPs / matmul peak). `assess` reports
achieved GB/s and TFLOP/s, the percentage of the roofline reached (floor / measured time), and
flags a time faster than the floor, beyond a tolerance, as impossible: the timing was fooled
(work done outside the timed region, cached results, a broken clock) and the grade must not
stand on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from html import escape

from runner.measure.peaks import Peaks, describe_device, device_key, measure_peaks
from runner.measure.peaks_cache import cache_filename, load_or_measure_peaks

__all__ = [
    "DEFAULT_TOLERANCE",
    "Peaks",
    "RooflineResult",
    "Workload",
    "assess",
    "cache_filename",
    "describe_device",
    "device_key",
    "load_or_measure_peaks",
    "measure_peaks",
    "roofline_svg",
]

# The peaks are what torch's copy and matmul reached, not what the hardware can do at best: a
# well-tuned kernel may beat them by a few percent, a time 5% under the floor may not.
DEFAULT_TOLERANCE = 0.05


@dataclass(frozen=True)
class Workload:
    """The least a correct kernel must do for one call: bytes it must read and write in
    device memory, and floating-point operations."""

    bytes_moved: int
    flops: int

    def __post_init__(self) -> None:
        for name in ("bytes_moved", "flops"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
        if self.bytes_moved == 0 and self.flops == 0:
            raise ValueError("a workload moves some bytes or does some FLOPs")

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved (infinite when nothing is moved)."""
        return self.flops / self.bytes_moved if self.bytes_moved else math.inf


@dataclass(frozen=True)
class RooflineResult:
    seconds: float
    bytes_moved: int
    flops: int
    dtype: str | None
    achieved_bytes_per_s: float
    achieved_flops_per_s: float
    arithmetic_intensity: float  # FLOP/byte
    memory_floor_s: float  # bytes / measured bandwidth
    compute_floor_s: float  # FLOPs / measured matmul peak for dtype
    floor_s: float  # the larger of the two
    percent_of_roofline: float  # floor / seconds * 100
    bound: str  # "memory" or "compute": which floor is higher
    impossible: bool  # seconds < floor * (1 - tolerance)
    tolerance: float
    message: str

    @property
    def achieved_gb_per_s(self) -> float:
        return self.achieved_bytes_per_s / 1e9

    @property
    def achieved_tflop_per_s(self) -> float:
        return self.achieved_flops_per_s / 1e12

    def to_dict(self) -> dict[str, float | int | str | bool | None]:
        return {
            **asdict(self),
            "achieved_gb_per_s": self.achieved_gb_per_s,
            "achieved_tflop_per_s": self.achieved_tflop_per_s,
        }


def assess(
    workload: Workload,
    seconds: float,
    peaks: Peaks,
    dtype: str | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> RooflineResult:
    """Place one measured time (seconds per call, e.g. the median) on the roofline.

    `dtype` names the matmul peak that bounds the FLOPs ("bf16", "fp32", ...); it may be left
    out only for a workload without FLOPs.
    """
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be positive and finite, not {seconds!r}")
    if not 0 <= tolerance < 1:
        raise ValueError("tolerance is a fraction in [0, 1)")
    memory_floor = workload.bytes_moved / peaks.memory_bytes_per_s
    compute_floor = 0.0
    if workload.flops:
        if dtype not in peaks.flops_per_s:
            known = ", ".join(sorted(peaks.flops_per_s))
            raise ValueError(f"no measured matmul peak for dtype {dtype!r} (measured: {known})")
        compute_floor = workload.flops / peaks.flops_per_s[dtype]
    floor = max(memory_floor, compute_floor)
    bound = "memory" if memory_floor >= compute_floor else "compute"
    impossible = seconds < floor * (1 - tolerance)
    achieved_bytes = workload.bytes_moved / seconds
    achieved_flops = workload.flops / seconds
    percent = floor / seconds * 100
    if bound == "memory":
        limit = (
            f"{_si(workload.bytes_moved, 'B')} at the measured "
            f"{_si(peaks.memory_bytes_per_s, 'B/s')}"
        )
    else:
        limit = (
            f"{_si(workload.flops, 'FLOP')} at the measured {dtype} matmul peak of "
            f"{_si(peaks.flops_per_s[dtype], 'FLOP/s')}"
        )
    if impossible:
        message = (
            f"Measured {_duration(seconds)} per call, but this device needs at least "
            f"{_duration(floor)} ({bound}-bound: {limit}); a time more than "
            f"{tolerance:.0%} under that floor is impossible, so the measurement is rejected."
        )
    else:
        message = (
            f"{_duration(seconds)} per call: {_si(achieved_bytes, 'B/s')} and "
            f"{_si(achieved_flops, 'FLOP/s')}, {percent:.0f}% of the roofline "
            f"({bound}-bound, floor {_duration(floor)}: {limit})."
        )
    return RooflineResult(
        seconds=float(seconds),
        bytes_moved=workload.bytes_moved,
        flops=workload.flops,
        dtype=dtype,
        achieved_bytes_per_s=achieved_bytes,
        achieved_flops_per_s=achieved_flops,
        arithmetic_intensity=workload.arithmetic_intensity,
        memory_floor_s=memory_floor,
        compute_floor_s=compute_floor,
        floor_s=floor,
        percent_of_roofline=percent,
        bound=bound,
        impossible=impossible,
        tolerance=tolerance,
        message=message,
    )


def _si(value: float, unit: str) -> str:
    """1.79e12, "B/s" -> "1.79 TB/s" (decimal prefixes, as bandwidths are quoted)."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _duration(seconds: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


# -- the plot ----------------------------------------------------------------------------------

_W, _H = 640, 420
_LEFT, _RIGHT, _TOP, _BOTTOM = 84, 24, 40, 64
_POINT_COLOURS = ("#d9480f", "#1c7ed6", "#2b8a3e", "#862e9c", "#e67700")
_ROOF = "#343a40"


def roofline_svg(
    peaks: Peaks,
    points: Sequence[tuple[str, float, float]],
    *,
    title: str = "Roofline",
    dtypes: Sequence[str] | None = None,
) -> str:
    """A self-contained log-log roofline: attainable FLOP/s against arithmetic intensity
    (FLOP/byte), the memory slope and one compute ceiling per dtype (default: every measured
    one), and `points` as (label, intensity, achieved FLOP/s), e.g. ("your kernel", ...)
    and ("baseline", ...). A point that cannot sit on log axes (no FLOPs, no bytes) is named
    under the plot instead. Plain SVG on a white background: no script, safe in an <img>."""
    dtypes = list(dtypes) if dtypes is not None else sorted(peaks.flops_per_s)
    ceilings = {name: peaks.flops_per_s[name] for name in dtypes}
    if not ceilings:
        raise ValueError("no compute ceiling to draw")
    bandwidth = peaks.memory_bytes_per_s
    ridges = {name: rate / bandwidth for name, rate in ceilings.items()}
    plotted: list[tuple[str, float, float]] = []
    skipped: list[str] = []
    for label, x, y in points:
        if math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0:
            plotted.append((str(label), float(x), float(y)))
        else:
            skipped.append(str(label))

    xs = [x for _, x, _ in plotted] + list(ridges.values())
    x_lo = 10 ** math.floor(math.log10(min(xs) / 4))
    x_hi = 10 ** math.ceil(math.log10(max(xs) * 4))
    top = max([*ceilings.values(), *(y for _, _, y in plotted)])
    bottom = min([bandwidth * x_lo, *(y for _, _, y in plotted)])
    y_hi = 10 ** math.ceil(math.log10(top * 1.5))
    y_lo = 10 ** math.floor(math.log10(bottom / 1.5))

    def sx(x: float) -> float:
        span = math.log10(x_hi) - math.log10(x_lo)
        return _LEFT + (_W - _LEFT - _RIGHT) * (math.log10(x) - math.log10(x_lo)) / span

    def sy(y: float) -> float:
        span = math.log10(y_hi) - math.log10(y_lo)
        return _H - _BOTTOM - (_H - _TOP - _BOTTOM) * (math.log10(y) - math.log10(y_lo)) / span

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="12" fill="#212529">',
        f"<title>{escape(title)}</title>",
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{_LEFT}" y="22" font-size="14">{escape(title)}</text>',
    ]
    parts += _grid(x_lo, x_hi, y_lo, y_hi, sx, sy)

    # The memory slope up to the highest ridge, then one flat ceiling per dtype.
    highest = max(ceilings, key=lambda name: ceilings[name])
    parts.append(
        f'<line x1="{sx(x_lo):.1f}" y1="{sy(bandwidth * x_lo):.1f}" '
        f'x2="{sx(ridges[highest]):.1f}" y2="{sy(ceilings[highest]):.1f}" '
        f'stroke="{_ROOF}" stroke-width="2"/>'
    )
    # The slope's label runs along it, above its middle (memory-bound points sit lower left).
    x0, y0 = sx(x_lo), sy(bandwidth * x_lo)
    x1, y1 = sx(ridges[highest]), sy(ceilings[highest])
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
    parts.append(
        f'<text x="{xm:.1f}" y="{ym - 7:.1f}" text-anchor="middle" '
        f'transform="rotate({angle:.1f} {xm:.1f} {ym:.1f})">'
        f"memory {escape(_si(bandwidth, 'B/s'))}</text>"
    )
    for name, rate in sorted(ceilings.items(), key=lambda item: -item[1]):
        dash = "" if name == highest else ' stroke-dasharray="6 4"'
        parts.append(
            f'<line x1="{sx(ridges[name]):.1f}" y1="{sy(rate):.1f}" x2="{sx(x_hi):.1f}" '
            f'y2="{sy(rate):.1f}" stroke="{_ROOF}" stroke-width="2"{dash}/>'
        )
        parts.append(
            f'<text x="{sx(x_hi) - 4:.1f}" y="{sy(rate) - 6:.1f}" text-anchor="end">'
            f"{escape(name)} matmul {escape(_si(rate, 'FLOP/s'))}</text>"
        )

    for number, (label, x, y) in enumerate(plotted):
        colour = _POINT_COLOURS[number % len(_POINT_COLOURS)]
        anchor = "end" if sx(x) > _W - _RIGHT - 160 else "start"
        offset = -9 if anchor == "end" else 9
        parts.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{colour}" stroke="white"/>'
        )
        parts.append(
            f'<text x="{sx(x) + offset:.1f}" y="{sy(y) + 16 + 14 * (number % 2):.1f}" '
            f'text-anchor="{anchor}" fill="{colour}">{escape(label)}</text>'
        )
    if skipped:
        parts.append(
            f'<text x="{_LEFT}" y="{_H - 8}">not on the plot (no FLOPs or no bytes): '
            f"{escape(', '.join(skipped))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _grid(x_lo, x_hi, y_lo, y_hi, sx, sy) -> list[str]:
    """Decade grid lines, tick labels and axis titles."""
    parts = []
    for exponent in range(round(math.log10(x_lo)), round(math.log10(x_hi)) + 1):
        x = sx(10.0**exponent)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{_H - _BOTTOM}" stroke="#dee2e6"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{_H - _BOTTOM + 16}" text-anchor="middle">'
            f"{10.0**exponent:g}</text>"
        )
    for exponent in range(round(math.log10(y_lo)), round(math.log10(y_hi)) + 1):
        y = sy(10.0**exponent)
        parts.append(
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" y2="{y:.1f}" stroke="#dee2e6"/>'
        )
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_si(10.0**exponent, 'FLOP/s'))}</text>"
        )
    parts.append(
        f'<text x="{(_LEFT + _W - _RIGHT) / 2:.0f}" y="{_H - _BOTTOM + 40}" '
        'text-anchor="middle">arithmetic intensity (FLOP/byte)</text>'
    )
    return parts
