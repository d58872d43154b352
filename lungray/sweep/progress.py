"""Sweep progress: a concise status line, one line per finished trial with an ETA, a summary.

Tune's own console output (verbose=1) prints a large table per update; a sweep of dozens of
trials needs one readable line per finished trial and a periodic one-line status instead.
:func:`summary_table` (pure, tested with exact numbers) is the end-of-sweep table: model x
training size, mean +- sd of the headline metric over seeds.

The ETA (:func:`eta_by_cell`) prices each remaining trial by what finished trials of the same
model and training size cost: a resnet18 trial at 450 images costs many times a simple_cnn
trial at 50, so an ETA from the first (cheap) trials' throughput jumped from 10.5 to 17 minutes
on the default preset (issue 13).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence

HEADLINE = "test_accuracy"


def format_seconds(s: float) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def eta_by_cell(
    finished: Mapping[Hashable, Sequence[float]],
    running: Sequence[tuple[Hashable, float]],
    pending: Sequence[Hashable],
    slots: int,
) -> float:
    """Seconds until the remaining trials are done, pricing each by its cost class.

    ``finished`` maps a cell ``(model, train_size)`` to the wall seconds of its finished trials;
    ``running`` holds ``(cell, seconds so far)``; ``pending`` one cell per trial not started;
    ``slots`` how many trials run at once. A cell costs the mean of its finished trials, else
    the mean of its model's finished trials (at other sizes), else the mean of all finished
    trials but at least as long as its model's longest-running trial so far (a resnet18 trial
    still running after 7 minutes says more about resnet18 than the simple_cnn trials that
    finished in 2). The remaining work (pending trials, plus what running ones still need) is shared by
    ``min(slots, trials left)`` slots, but takes no less than the longest single trial left (a
    trial does not split across slots). NaN before any trial finishes.

    >>> eta_by_cell({("cnn", 50): [10, 20], ("r18", 50): [100]}, [(("r18", 50), 30)],
    ...             [("cnn", 50), ("r18", 450), ("cnn", 450)], slots=2)
    100.0
    """
    durations = [float(x) for v in finished.values() for x in v]
    if not durations:
        return float("nan")
    overall = sum(durations) / len(durations)
    by_model: dict[Any, list[float]] = {}
    for cell, v in finished.items():
        by_model.setdefault(_model_of(cell), []).extend(float(x) for x in v)

    running_for: dict[Any, float] = {}
    for cell, t in running:
        running_for[_model_of(cell)] = max(running_for.get(_model_of(cell), 0.0), float(t))

    def cost(cell: Hashable) -> float:
        own = finished.get(cell)
        if own:
            return sum(own) / len(own)
        same = by_model.get(_model_of(cell))
        return sum(same) / len(same) if same else max(overall, running_for.get(_model_of(cell), 0.0))

    each = [cost(c) for c in pending] + [max(cost(c) - float(t), 0.0) for c, t in running]
    if not each:
        return 0.0
    return max(sum(each) / max(1, min(int(slots), len(each))), max(each))


def _model_of(cell: Hashable) -> Any:
    return cell[0] if isinstance(cell, tuple) and cell else cell


def trial_line(index: int, total: int, trial_name: str, metrics: Mapping[str, Any], seconds: float, eta: float, headline: str = HEADLINE, status: str = "done") -> str:
    """``[3/8] done  simple_cnn|n=40|adam seed=1  test_accuracy=0.8125  24s  ETA 1m10s``."""
    cell, _, seed = trial_name.rpartition("|")
    v = metrics.get(headline)
    val = f"{headline}={v:.4f}" if isinstance(v, (int, float)) and math.isfinite(float(v)) else f"{headline}=n/a"
    eta_s = "" if index >= total else f"  ETA {format_seconds(eta)}"
    return f"[{index}/{total}] {status:<6} {cell} {seed.replace('=', ' ')}  {val}  {format_seconds(seconds)}{eta_s}"


def make_callback(
    total: int,
    echo: Callable[[str], None] = print,
    headline: str = HEADLINE,
    status_every_s: float = 60.0,
    cells: Optional[Sequence[tuple[str, int]]] = None,
    slots: int = 1,
):
    """A Ray Tune ``Callback`` that prints trial lines, ETA, notes and a periodic status line.

    ``cells`` is one ``(model, train_size)`` per trial of the sweep (the ETA's cost classes)
    and ``slots`` the number of trials run at once. Tune pickles its callbacks into the
    experiment state and ``Tuner.restore`` brings back the pickled one, so the callback prints
    through :func:`set_echo`'s function (the current driver's) and resets its clock and counts
    when an experiment (re)starts.
    """
    set_echo(echo)
    return _callback_class()(total, headline, status_every_s, list(cells or []), int(slots))


#: Key of a Tune result that carries a one-line note for the driver's console (e.g. a
#: checkpoint that failed verification and what the trial did instead); trials set it.
NOTE_KEY = "lungray_note"

_CLASS: list = []
_ECHO: list = [print]


def set_echo(echo: Callable[[str], None]) -> None:
    """Where progress lines go in this driver process (``print`` by default)."""
    _ECHO[:] = [echo]


def _callback_class():
    """The callback class, built on first use (keeps ``import ray`` out of module import)."""
    if _CLASS:
        return _CLASS[0]
    from ray.tune import Callback

    class SweepProgress(Callback):
        def __init__(self, total: int, headline: str, status_every_s: float, cells: list, slots: int) -> None:
            self.total = total
            self.headline = headline
            self.status_every_s = status_every_s
            self.cells = [tuple(c) for c in cells]
            self.slots = slots
            self.setup()

        def setup(self, **info) -> None:
            """Called by Tune when the experiment starts or is restored: a fresh clock."""
            self.t0 = time.time()
            self.already_done: Optional[int] = None  # trials Tune restored as finished
            self.done = 0
            self.new_done = 0
            self.last_status = time.time()
            self.started: dict[str, float] = {}
            self.finished: dict[tuple, list[float]] = {}
            self.closed: Counter = Counter()  # finished (or restored as finished) trials per cell
            self.noted: set = set()

        def echo(self, line: str) -> None:
            # through the module, not a global captured when Tune pickled this class by value
            from lungray.sweep import progress

            progress._ECHO[0](line)

        def _count_restored(self, trials) -> None:
            if self.already_done is None:
                restored = [t for t in trials if t.status == "TERMINATED"]
                self.already_done = len(restored)
                self.done = self.already_done
                self.closed.update(self._cell(t) for t in restored)

        def _cell(self, trial) -> tuple:
            c = trial.config or {}
            return (c.get("model"), int(c.get("train_size") or 0))

        def eta(self, trials) -> float:
            """:func:`eta_by_cell` over the grid: cells not finished or running are pending."""
            now = time.time()
            running = [(self._cell(t), now - self.started.get(t.trial_id, now)) for t in trials if t.status == "RUNNING"]
            left = Counter(self.cells) - self.closed - Counter(c for c, _ in running)
            return eta_by_cell(self.finished, running, list(left.elements()), self.slots)

        def on_step_begin(self, iteration, trials, **info):
            self._count_restored(trials)

        def _name(self, trial) -> str:
            c = trial.config
            try:
                from lungray.sweep.grid import trial_key

                return trial_key(c["model"], c["train_size"], c["optimizer"], c["seed"])
            except KeyError:
                return str(trial)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = time.time()

        def _finish(self, trials, trial, status: str, reason: str = "") -> None:
            self._count_restored(trials)
            self.done += 1
            self.new_done += 1
            seconds = time.time() - self.started.get(trial.trial_id, self.t0)
            cell = self._cell(trial)
            self.closed[cell] += 1
            own = (trial.last_result or {}).get("trial_wall_seconds")  # the trial's own time, also after a resume
            cost = float(own) if isinstance(own, (int, float)) and math.isfinite(own) and own > 0 else seconds
            if status == "done":
                self.finished.setdefault(cell, []).append(cost)
            line = trial_line(self.done, self.total, self._name(trial), trial.last_result or {}, seconds, self.eta(trials), self.headline, status)
            self.echo(f"{line}  | {reason}" if reason else line)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            note = result.get(NOTE_KEY)
            if note and (trial.trial_id, note) not in self.noted:
                self.noted.add((trial.trial_id, note))
                self.echo(f"note: {note}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trials, trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            from lungray.sweep.faults import trial_error_line

            try:  # Tune's traceback of the failure (its own 50-line print is off: runner.quiet_ray_console)
                text = open(trial.error_file).read() if trial.error_file else ""
            except OSError:
                text = ""
            self._finish(trials, trial, "FAILED", trial_error_line(text) if text else "")

        def on_step_end(self, iteration, trials, **info):
            self._count_restored(trials)
            if time.time() - self.last_status < self.status_every_s:
                return
            self.last_status = time.time()
            counts: dict[str, int] = {}
            for t in trials:
                counts[t.status] = counts.get(t.status, 0) + 1
            parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            self.echo(f"status: {parts} | elapsed {format_seconds(time.time() - self.t0)} | ETA {format_seconds(self.eta(trials))}")

    _CLASS.append(SweepProgress)
    return SweepProgress


def disk_usage(paths: Sequence[Any], seen: Optional[set] = None) -> int:
    """Bytes of the files at or under ``paths``, each inode counted once (``seen`` carries over
    calls: best weights hard-linked into MLflow's artifact store count where first seen)."""
    import os

    seen = set() if seen is None else seen
    files: list[str] = []
    for root in map(str, paths):
        if os.path.isfile(root):
            files.append(root)
        for dirpath, _, names in os.walk(root):
            files.extend(os.path.join(dirpath, n) for n in names)
    total = 0
    for f in files:
        try:
            st = os.lstat(f)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def format_bytes(n: float) -> str:
    """``812 KB``, ``5.3 MB``, ``412 MB``, ``2.8 GB`` (decimal units, as ``du --si``)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            break
        n /= 1000
    return f"{n:.1f} {unit}" if unit in ("MB", "GB") and n < 10 else f"{n:.0f} {unit}"


def disk_breakdown(exp_dir: Any, output_dir: Any) -> tuple[dict[str, int], dict[str, int], int]:
    """Bytes of a sweep's output: ``(its own folder's entries, the output folder's shared
    entries (mlartifacts/, mlflow.db, cache/), the whole output folder)``, each file counted once
    (the sweep's own folder first, so best weights hard-linked into mlartifacts/ count there)."""
    from pathlib import Path

    exp, out = Path(exp_dir), Path(output_dir)
    seen: set = set()
    own = {p.name + ("/" if p.is_dir() else ""): disk_usage([p], seen) for p in sorted(exp.iterdir())} if exp.is_dir() else {}
    shared = {n + ("/" if (out / n).is_dir() else ""): disk_usage([out / n], seen) for n in ("mlartifacts", "mlflow.db", "cache") if (out / n).exists()}
    total = sum(own.values()) + sum(shared.values()) + disk_usage([out], seen)
    return own, shared, total


def disk_line(exp_dir: Any, output_dir: Any) -> str:
    """``disk: this sweep 405 MB (trials/ 403 MB, tune/ 1.2 MB, ...); runs 412 MB in all (...)``."""
    own, shared, total = disk_breakdown(exp_dir, output_dir)
    big = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:4] if v >= 1000)
    rest = ", ".join(f"{k} {format_bytes(v)}" for k, v in shared.items())
    return (f"disk: this sweep {format_bytes(sum(own.values()))} ({big}); {output_dir} {format_bytes(total)} in all "
            f"({rest}; files hard-linked between trials/ and mlartifacts/ counted once)")


def summary_table(rows: Sequence[Mapping[str, Any]], metric: str = HEADLINE):
    """Mean +- sd of ``metric`` over seeds, one row per (model, optimizer), one column per size.

    ``rows`` are per-trial dicts with ``model``, ``optimizer``, ``train_size``, ``seed``, the
    metric and, when known, ``degenerate`` (why the trial's output is degenerate, ``""`` when it
    is not: :func:`lungray.report.stats.degenerate_output` on its ``predictions.csv``). Which
    trials count is decided by :func:`lungray.report.stats.counted_mask`, the rule every report
    section applies: a degenerate trial is left out of its cell (shown as ``+1 degenerate``)
    unless every trial of the cell is; trials without a finite value (failed) are left out.
    The sd is the sample standard deviation (ddof=1); with one seed it is shown as ``n=1``
    without sd. Returns a :class:`pandas.DataFrame` of strings.
    """
    import numpy as np
    import pandas as pd

    from lungray.report.stats import counted_mask

    df = pd.DataFrame(list(rows))
    if df.empty or metric not in df:
        return pd.DataFrame()
    df = df[np.isfinite(pd.to_numeric(df[metric], errors="coerce"))].copy()
    if df.empty:
        return pd.DataFrame()
    df[metric] = df[metric].astype(float)
    if "optimizer" not in df:
        df["optimizer"] = ""
    flags = df["degenerate"].fillna("").astype(str).tolist() if "degenerate" in df else [""] * len(df)
    df["_counted"] = counted_mask(list(zip(df["model"], df["optimizer"], df["train_size"])), flags)
    df["_flagged"] = [f != "" for f in flags]
    multi_opt = df["optimizer"].nunique() > 1
    keys = ["model", "optimizer"] if multi_opt else ["model"]
    out: dict = {}
    sizes = sorted(df["train_size"].unique())
    for key, g in df.groupby(keys, sort=False):
        label = " / ".join(key) if isinstance(key, tuple) else (key[0] if isinstance(key, list) else key)
        row = {}
        for n in sizes:
            cell = g[g["train_size"] == n]
            v = cell.loc[cell["_counted"], metric].to_numpy()
            left_out = int((~cell["_counted"]).sum())
            every = bool(len(cell)) and bool(cell["_flagged"].all())
            note = f", +{left_out} degenerate" if left_out else (", all degenerate" if every else "")
            if len(v) == 0:
                row[f"n={n}"] = ""
            elif len(v) == 1:
                row[f"n={n}"] = f"{v[0]:.3f} (n=1{note})"
            else:
                row[f"n={n}"] = f"{v.mean():.3f} ± {v.std(ddof=1):.3f} (n={len(v)}{note})"
        out[label] = row
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.name = "model / optimizer" if multi_opt else "model"
    return table


def format_summary(rows: Sequence[Mapping[str, Any]], metric: str = HEADLINE) -> str:
    table = summary_table(rows, metric)
    if table.empty:
        return f"no finished trials with {metric}"
    text = f"{metric}, mean ± sd over seeds:\n" + table.to_string()
    if table.apply(lambda col: col.astype(str).str.contains("degenerate")).to_numpy().any():
        text += ("\n(degenerate: a constant output, or the same class predicted for every evaluation image with "
                 "scores that do not rank; left out of its cell, as in the report, unless every run of the cell is)")
    return text
