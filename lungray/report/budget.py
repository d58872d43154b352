"""Was a point of the learning curve limited by its training budget, or by its data? (issue 20.2)

A learning curve answers "how does the score grow with the number of training images" only if
every point was trained until more training stopped helping. The default preset once trained a
fixed 200 optimisation steps at every size: 450 images got 7 passes, their best checkpoint was
the last epoch, and the curve at 450 measured the budget, not the data (Hestness et al. 2017
and the training-size study of PROTOCOLS.md section 1 train each size to convergence or a fixed
number of epochs, never a fixed number of steps across sizes).

A run is **budget-limited** when it used its whole budget (early stopping did not end it) and
its best validation evaluation came at the end of training:

* with early stopping (``schedule.early_stopping_patience = p``): the run was not stopped
  early, i.e. the validation metric was still improving within its last ``p`` evaluations
  when the budget ran out (the criterion the study itself uses for "it has plateaued");
* without it: the best evaluation is the last one, or one of the last quarter of the
  evaluations (the validation metric still improving at the end of training).

A model fitted in closed form (``logreg``: one full-batch fit) is never budget-limited. A cell
is flagged when any of its counted runs is (:func:`cell_budgets`; the count says how many), so
the flag is a caveat on the point, never a verdict: "may be limited by the training budget, not
by the data". Everything here reads what each trial logged (``best_epoch``, ``epochs_run``,
``epochs_planned``, ``steps_per_epoch``, ``batch_size_used``, ``stopped_early`` and the per-epoch
validation history); for sweeps logged before those budget metrics existed the plan is
re-derived from the sweep's config.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pandas as pd

from lungray.report.load import COMPLETE, Sweep

__all__ = ["run_budgets", "cell_budgets", "schedule_sentence", "flagged_sentence", "BUDGET_CAVEAT", "LAST_SHARE"]

#: Without early stopping, a best evaluation in this last share of the evaluations counts as
#: "still improving at the end" (at least the last evaluation).
LAST_SHARE = 0.25

#: The words every place uses for a flagged point.
BUDGET_CAVEAT = "may be limited by the training budget, not by the data"

RUN_COLUMNS = ["run_id", "label", "model", "optimizer", "train_size", "seed", "counted", "pretrained", "full_batch",
               "batch_size", "steps_per_epoch", "epochs_planned", "steps_planned", "epochs_run", "steps_run", "passes",
               "best_epoch", "evaluations", "best_evaluation", "stopped_early", "budget_limited", "budget_why"]


def _trials_by_axes(config: Any) -> dict:
    if config is None:
        return {}
    return {(t.arm, int(t.train_size), t.optimizer.key, int(t.seed)): t for t in config.trials()}


def _full_batch(name: str) -> bool:
    from lungray.models.specs import model_spec

    spec = model_spec(name)
    return bool(spec is not None and spec.full_batch)


def _num(r: pd.Series, key: str) -> float:
    v = r.get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _pretrained_words(v: Any) -> str:
    if v is True:
        return "pretrained"
    if v in (False, None, "", "false"):
        return "from scratch"
    return f"pretrained ({v})"


def run_budgets(sweep: Sweep, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per complete run (``runs``: :func:`lungray.report.tables.add_derived` with a
    ``label``): its budget (batch, steps per epoch, epochs planned and run, steps, passes over
    its training subset), where its best validation evaluation fell, whether early stopping
    ended it, and ``budget_limited`` with the reason in words (``budget_why``)."""
    done = runs[runs["state"] == COMPLETE] if "state" in runs else runs
    if done.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    trials = _trials_by_axes(sweep.config)
    h = sweep.histories
    rows = []
    for _, r in done.iterrows():
        n = int(r["train_size"])
        t = trials.get((r["model"], n, r["optimizer"], int(r["seed"]) if pd.notna(r["seed"]) else -1))
        sch = t.schedule if t is not None else (sweep.config.schedule if sweep.config is not None else None)
        name = t.model.name if t is not None else str(r["model"])
        full = _full_batch(name)
        bs, spe, planned = _num(r, "batch_size_used"), _num(r, "steps_per_epoch"), _num(r, "epochs_planned")
        if sch is not None and not (np.isfinite(bs) and np.isfinite(spe) and np.isfinite(planned)):
            b, e = sch.resolve(n)
            b = min(int(b), n)
            spe0 = sch.epoch_steps(n, b) or math.ceil(n / b)
            bs = bs if np.isfinite(bs) else float(b)
            spe = spe if np.isfinite(spe) else float(spe0)
            planned = planned if np.isfinite(planned) else float(e)
        if full:
            bs, spe, planned = float(n), 1.0, 1.0
        ran = _num(r, "epochs_run")
        best = _num(r, "best_epoch")
        monitor = sch.monitor if sch is not None else "val_loss"
        patience = sch.early_stopping_patience if sch is not None else None
        stopped = _num(r, "stopped_early")
        if not np.isfinite(stopped):  # logged before the budget metrics: ended before its planned epochs
            stopped = float(np.isfinite(ran) and np.isfinite(planned) and ran < planned)
        mode = _mode(sweep, monitor)
        vals = h[(h["run_id"] == r["run_id"]) & (h["key"] == monitor)].sort_values("step") if not h.empty else h
        k = len(vals)
        best_i = math.nan
        if k:
            steps = vals["step"].to_numpy(dtype=float)
            at = np.flatnonzero(steps == best) if np.isfinite(best) else np.zeros(0, int)
            v = vals["value"].to_numpy(dtype=float)
            best_i = float(at[-1] + 1) if at.size else float((np.nanargmin(v) if mode == "min" else np.nanargmax(v)) + 1)
        limited, why = _judge(full, bool(stopped), ran, planned, best, k, best_i, patience, monitor)
        steps_run = ran * spe if np.isfinite(ran) and np.isfinite(spe) else math.nan
        rows.append({
            "run_id": r["run_id"], "label": r.get("label", r["model"]), "model": r["model"], "optimizer": r["optimizer"],
            "train_size": n, "seed": r["seed"], "counted": bool(r.get("counted", True)),
            "pretrained": _pretrained_words(t.model.pretrained) if t is not None else "unknown",
            "full_batch": full, "batch_size": bs, "steps_per_epoch": spe, "epochs_planned": planned,
            "steps_planned": planned * spe if np.isfinite(planned) and np.isfinite(spe) else math.nan,
            "epochs_run": ran, "steps_run": steps_run,
            "passes": steps_run * bs / n if np.isfinite(steps_run) and np.isfinite(bs) and n else math.nan,
            "best_epoch": best, "evaluations": k, "best_evaluation": best_i, "stopped_early": bool(stopped),
            "budget_limited": limited, "budget_why": why,
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _mode(sweep: Sweep, monitor: str) -> str:
    try:
        from lungray.train.tasks import TASKS

        return TASKS.get(sweep.task).mode(monitor)
    except Exception:  # noqa: BLE001 - an unknown monitor name: losses fall, scores rise
        return "min" if "loss" in monitor else "max"


def _judge(full: bool, stopped: bool, ran: float, planned: float, best: float, k: int, best_i: float,
           patience: Optional[int], monitor: str) -> tuple[bool, str]:
    """``(budget_limited, why)`` of one run (see the module docstring)."""
    if full:
        return False, "fitted in closed form (one full-batch fit)"
    if stopped:
        return False, f"early stopping ended it at epoch {int(ran)}" + (f" of {int(planned)}" if np.isfinite(planned) else "")
    if np.isfinite(ran) and np.isfinite(planned) and ran < planned:
        return False, f"ran {int(ran)} of {int(planned)} epochs"
    if k and np.isfinite(best_i):
        if patience is not None:
            return True, (f"still improving: best {monitor} at evaluation {int(best_i)} of {k}, within the last {patience} "
                          "(the early-stopping patience) when the budget ran out")
        window = max(1, math.ceil(LAST_SHARE * k))
        if best_i > k - window:
            where = "the last evaluation" if best_i == k else f"evaluation {int(best_i)} of {k} (the last quarter)"
            return True, f"best {monitor} at {where}"
        return False, f"best {monitor} at evaluation {int(best_i)} of {k}"
    if np.isfinite(best) and np.isfinite(ran):
        if best >= ran:
            return True, f"best epoch {int(best)} is the last"
        return False, f"best epoch {int(best)} of {int(ran)}"
    return False, "unknown (no best epoch logged)"


def _median(s: pd.Series) -> float:
    v = pd.to_numeric(s, errors="coerce").dropna()
    return float(v.median()) if len(v) else math.nan


def cell_budgets(run_table: pd.DataFrame) -> pd.DataFrame:
    """One row per (model x optimizer label, size) over the runs that COUNT (the runs of every
    number of the report): the budget (batch, steps per epoch, epochs and steps planned), what
    the runs used (median epochs and steps run, median best epoch, median passes over the
    subset), how many early stopping ended, and ``budget_limited`` (any counted run is) with
    ``n_limited`` of ``n`` runs."""
    cols = ["label", "model", "optimizer", "train_size", "pretrained", "batch_size", "steps_per_epoch", "epochs_planned",
            "steps_planned", "epochs_run", "steps_run", "best_epoch", "passes", "n", "n_stopped_early", "n_limited",
            "budget_limited", "why"]
    if run_table is None or run_table.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    use = run_table[run_table["counted"].astype(bool)]
    for (lab, m, o, n), g in use.groupby(["label", "model", "optimizer", "train_size"], sort=False):
        lim = g[g["budget_limited"].astype(bool)]
        rows.append({
            "label": lab, "model": m, "optimizer": o, "train_size": int(n),
            "pretrained": "; ".join(sorted(set(g["pretrained"].astype(str)))),
            "batch_size": _median(g["batch_size"]), "steps_per_epoch": _median(g["steps_per_epoch"]),
            "epochs_planned": _median(g["epochs_planned"]), "steps_planned": _median(g["steps_planned"]),
            "epochs_run": _median(g["epochs_run"]), "steps_run": _median(g["steps_run"]), "best_epoch": _median(g["best_epoch"]),
            "passes": _median(g["passes"]), "n": len(g), "n_stopped_early": int(g["stopped_early"].astype(bool).sum()),
            "n_limited": len(lim), "budget_limited": len(lim) > 0,
            "why": "; ".join(f"seed {int(s)}: {w}" for s, w in zip(lim["seed"], lim["budget_why"])),
        })
    return pd.DataFrame(rows, columns=cols).sort_values(["label", "train_size"], kind="stable").reset_index(drop=True)


def schedule_sentence(config: Any) -> str:
    """The training budget of the sweep in words, for the report next to the curves."""
    if config is None:
        return ""
    s = config.schedule
    if s.rule == "steps":
        what = (f"a fixed budget of {s.max_steps} optimisation steps of batch {s.batch_size} at every size (so a larger "
                "training size gets fewer passes over its images)")
    elif s.rule == "size":
        what = "batch and epochs by training size (" + "; ".join(
            f"≤ {r.max_size}: batch {r.batch_size} × {r.epochs} epochs" for r in sorted(s.size_rules, key=lambda r: r.max_size)) + ")"
    else:
        what = f"batch {s.batch_size} × up to {s.epochs} epochs"
    if s.steps_per_epoch is not None:
        what += f", an epoch being {s.steps_per_epoch} optimisation steps (not one pass)"
    stop = (f"early stopping after {s.early_stopping_patience} evaluations without a better {s.monitor}"
            if s.early_stopping_patience is not None else "no early stopping")
    every = "every epoch" if s.eval_every == 1 else f"every {s.eval_every} epochs and at the last"
    return f"Training budget: {what}; validation {every}; {stop}; the checkpoint with the best {s.monitor} is evaluated."


def flagged_sentence(cell_table: pd.DataFrame) -> str:
    """The budget-limited cells in one sentence (``""`` when none): the words of the headline,
    the curves' note and the tables."""
    if cell_table is None or cell_table.empty or not cell_table["budget_limited"].any():
        return ""
    lim = cell_table[cell_table["budget_limited"].astype(bool)]
    per = []
    for lab, g in lim.groupby("label", sort=False):
        sizes = [f"{int(r.train_size):,} ({r.n_limited} of {r.n} runs)" for r in g.itertuples()]
        per.append(f"{lab} at " + (sizes[0] if len(sizes) == 1 else ", ".join(sizes[:-1]) + " and " + sizes[-1]))
    return ("Budget-limited points: " + "; ".join(per) + " ended their training budget still improving on validation "
            f"(best epoch at the end): these points {BUDGET_CAVEAT}, and the curve there may understate what more "
            "training on the same images would give.")
