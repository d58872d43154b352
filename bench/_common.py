"""Shared plumbing for the ``bench/`` scripts: machine info, interleaved repeats, tables.

Why interleaved: these benchmarks run on shared, noisy machines (2 CPUs in CI, other jobs
running). Absolute images/s drift by tens of percent over a minute, so every script measures its
variants side by side in one process, alternating them (A B, B A, A B ...) and reports the
median of each and the median of the *paired* per-round ratios, which cancels slow drift.
Nothing here asserts a time: the tests only check that the scripts ran and printed their ratios.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python bench/x.py` from anywhere without installing
    sys.path.insert(0, str(REPO))


def machine_info(device: Optional[str] = None) -> dict[str, str]:
    """What the numbers were measured on; printed at the top of every script."""
    info = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "cpus": f"{os.cpu_count()} (usable {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'})",
        "loadavg_1m_5m_15m": " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?",
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = str(torch.get_num_threads())
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        info["device"] = device
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except ImportError:  # pragma: no cover
        info["torch"] = "missing"
    from importlib import metadata

    for dist in ("ray", "timm", "mlflow"):  # versions without importing them (seconds each)
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            pass
    return info


def print_header(title: str, args: object, device: Optional[str] = None) -> None:
    print(f"== {title} ==")
    for k, v in machine_info(device).items():
        print(f"  {k:<18} {v}")
    print(f"  {'args':<18} {vars(args) if hasattr(args, '__dict__') else args}")
    print(flush=True)


def print_load(label: str = "loadavg now") -> None:
    """Load average at the end of a run: how contended the measurement was."""
    if hasattr(os, "getloadavg"):
        print(f"{label}: " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs", flush=True)


def interleave(
    variants: Mapping[str, Callable[[], float]],
    repeats: int,
    *,
    verbose: bool = True,
) -> dict[str, list[float]]:
    """Run each variant ``repeats`` times, alternating the order every round.

    Each callable returns one figure (e.g. images/s). Round r runs the variants in order when
    r is even and reversed when r is odd (A B, B A, ...), so a variant is not always the one
    that runs right after a warm cache or right before a slow neighbour. Returns name -> values
    in round order (value i of every variant comes from the same round: pairable).
    """
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            v = float(variants[n]())
            out[n].append(v)
            if verbose:
                print(f"  round {r + 1}/{repeats}  {n:<34} {v:10.2f}", flush=True)
    return out


def median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[i] / den[i] (robust to drift that hits both alike)."""
    return median([a / b for a, b in zip(num, den) if b])


def spread(xs: Sequence[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "-"
    return f"{min(xs):.1f}-{max(xs):.1f}"


def print_table(rows: Sequence[Mapping[str, object]], title: str = "") -> None:
    """A plain fixed-width table (no dependency; pasted into RESULTS.md as-is)."""
    if title:
        print(f"\n{title}")
    if not rows:
        print("  (no rows)")
        return
    cols = list(rows[0])
    fmt = {c: (lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)) for c in cols}
    cells = [[fmt[c](r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  " + "  ".join("-" * w for w in widths))
    for row in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print(flush=True)


def print_ratio(name: str, value: float, target: Optional[float] = None, note: str = "") -> None:
    """The machine-readable line every script ends with: ``RATIO <name> = <value>``.

    ``tests/test_bench.py`` looks for these lines (never at the value).
    """
    t = ""
    if target is not None:
        t = f"  (target >= {target:g}: {'met' if value >= target else 'MISSED'})"
    print(f"RATIO {name} = {value:.3f}{t}{'  ' + note if note else ''}", flush=True)


@contextlib.contextmanager
def work_dir(out: Optional[str], prefix: str) -> Iterator[Path]:
    """The script's work folder: ``--out`` (kept) or a temp dir removed at the end, even on failure."""
    path = Path(out) if out else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if not out:
            shutil.rmtree(path, ignore_errors=True)


class Timer:
    """``with Timer() as t: ...; t.s`` -- perf_counter seconds."""

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0


def set_threads(n: int) -> None:
    """Same intra-op thread count for every variant (a Ray worker would otherwise differ)."""
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
