"""Sweep progress: a concise status line, one line per finished trial with an ETA, a summary.

Tune's own console output (verbose=1) prints a large table per update; a sweep of dozens of
trials needs one readable line per finished trial and a periodic one-line status instead.
:func:`summary_table` (pure, tested with exact numbers) is the end-of-sweep table: model x
training size, mean +- sd of the headline metric over seeds.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence

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


def eta_seconds(elapsed: float, done: int, total: int) -> float:
    """Remaining time at the observed throughput (finished trials per second so far).

    Throughput already includes concurrency, so no separate correction for parallel trials.
    Returns NaN before the first trial finishes.
    """
    if done <= 0:
        return float("nan")
    return max(0.0, elapsed / done * (total - done))


def trial_line(index: int, total: int, trial_name: str, metrics: Mapping[str, Any], seconds: float, eta: float, headline: str = HEADLINE, status: str = "done") -> str:
    """``[3/8] done  simple_cnn|n=40|adam seed=1  test_accuracy=0.8125  24s  ETA 1m10s``."""
    cell, _, seed = trial_name.rpartition("|")
    v = metrics.get(headline)
    val = f"{headline}={v:.4f}" if isinstance(v, (int, float)) and math.isfinite(float(v)) else f"{headline}=n/a"
    eta_s = "" if index >= total else f"  ETA {format_seconds(eta)}"
    return f"[{index}/{total}] {status:<6} {cell} {seed.replace('=', ' ')}  {val}  {format_seconds(seconds)}{eta_s}"


def make_callback(total: int, echo: Callable[[str], None] = print, headline: str = HEADLINE, status_every_s: float = 60.0):
    """A Ray Tune ``Callback`` that prints trial lines, ETA and a periodic status line.

    Tune pickles its callbacks into the experiment state and ``Tuner.restore`` brings back
    the pickled one, so the callback prints through :func:`set_echo`'s function (the current
    driver's) and resets its clock and counts when an experiment (re)starts.
    """
    set_echo(echo)
    return _callback_class()(total, headline, status_every_s)


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
        def __init__(self, total: int, headline: str, status_every_s: float) -> None:
            self.total = total
            self.headline = headline
            self.status_every_s = status_every_s
            self.setup()

        def setup(self, **info) -> None:
            """Called by Tune when the experiment starts or is restored: a fresh clock."""
            self.t0 = time.time()
            self.already_done: Optional[int] = None  # trials Tune restored as finished
            self.done = 0
            self.new_done = 0
            self.last_status = time.time()
            self.started: dict[str, float] = {}

        def echo(self, line: str) -> None:
            # through the module, not a global captured when Tune pickled this class by value
            from lungray.sweep import progress

            progress._ECHO[0](line)

        def _count_restored(self, trials) -> None:
            if self.already_done is None:
                self.already_done = sum(1 for t in trials if t.status == "TERMINATED")
                self.done = self.already_done

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

        def _finish(self, trials, trial, status: str) -> None:
            self._count_restored(trials)
            self.done += 1
            self.new_done += 1
            seconds = time.time() - self.started.get(trial.trial_id, self.t0)
            eta = eta_seconds(time.time() - self.t0, self.new_done, self.total - (self.already_done or 0))
            self.echo(trial_line(self.done, self.total, self._name(trial), trial.last_result or {}, seconds, eta, self.headline, status))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trials, trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finish(trials, trial, "FAILED")

        def on_step_end(self, iteration, trials, **info):
            self._count_restored(trials)
            if time.time() - self.last_status < self.status_every_s:
                return
            self.last_status = time.time()
            counts: dict[str, int] = {}
            for t in trials:
                counts[t.status] = counts.get(t.status, 0) + 1
            parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            eta = eta_seconds(time.time() - self.t0, self.new_done, self.total - (self.already_done or 0))
            self.echo(f"status: {parts} | elapsed {format_seconds(time.time() - self.t0)} | ETA {format_seconds(eta)}")

    _CLASS.append(SweepProgress)
    return SweepProgress


def summary_table(rows: Sequence[Mapping[str, Any]], metric: str = HEADLINE):
    """Mean +- sd of ``metric`` over seeds, one row per (model, optimizer), one column per size.

    ``rows`` are per-trial dicts with ``model``, ``optimizer``, ``train_size``, ``seed`` and the
    metric; trials without a finite value (failed) are left out and counted in ``n``. The sd is
    the sample standard deviation (ddof=1); with one seed it is shown as ``n=1`` without sd.
    Returns a :class:`pandas.DataFrame` of strings.
    """
    import numpy as np
    import pandas as pd

    df = pd.DataFrame(list(rows))
    if df.empty or metric not in df:
        return pd.DataFrame()
    df = df[np.isfinite(pd.to_numeric(df[metric], errors="coerce"))]
    if df.empty:
        return pd.DataFrame()
    df[metric] = df[metric].astype(float)
    multi_opt = df["optimizer"].nunique() > 1
    keys = ["model", "optimizer"] if multi_opt else ["model"]
    out: dict = {}
    sizes = sorted(df["train_size"].unique())
    for key, g in df.groupby(keys, sort=False):
        label = " / ".join(key) if isinstance(key, tuple) else key
        row = {}
        for n in sizes:
            v = g.loc[g["train_size"] == n, metric].to_numpy()
            if len(v) == 0:
                row[f"n={n}"] = ""
            elif len(v) == 1:
                row[f"n={n}"] = f"{v[0]:.3f} (n=1)"
            else:
                row[f"n={n}"] = f"{v.mean():.3f} ± {v.std(ddof=1):.3f} (n={len(v)})"
        out[label] = row
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.name = "model / optimizer" if multi_opt else "model"
    return table


def format_summary(rows: Sequence[Mapping[str, Any]], metric: str = HEADLINE) -> str:
    table = summary_table(rows, metric)
    if table.empty:
        return f"no finished trials with {metric}"
    return f"{metric}, mean ± sd over seeds:\n" + table.to_string()
