"""Report section "Does the model look at the lungs?": the shortcut probes of issue 24 (points 2-4).

The COVID chest-film literature's models learned the hospital, not the disease (DeGrave et al.
2021, "AI for radiographic COVID-19 detection selects shortcuts over signal", Nat Mach Intell;
Roberts et al. 2021, Nat Mach Intell; Zech et al. 2018, PLoS Med). This section reads what the
sweep measured for that, and states the verdict first, in one sentence:

* **lung ablations** (every trial's ``probes.csv``, :mod:`lungray.sweep.probes`): per cell
  (model x size x optimizer, over seeds) accuracy and AUC on the evaluation images with the lung
  fields blanked and with everything outside them blanked, each with an interval that carries
  the seeds' and the images' noise (:func:`~lungray.report.stats.two_level_ci_scores`,
  :func:`~lungray.report.stats.two_level_ci_boot`), against chance (accuracy: the majority-class
  rate of those images, what a constant answer scores; AUC: 0.5). A cell whose lower bound with
  the lungs blanked is above chance **uses shortcuts**: it still tells the classes apart with no
  lung in the image (the accuracy decides: :func:`cell_ablation` says why not the AUC);
* **saliency**: the share of each Grad-CAM map's mass inside the lungs, against the image-blind
  map (the mean training lung mask), the same architecture with randomised weights and a uniform
  map (the lungs' share of the image). A cell whose model learned something but whose maps hold
  no more of their mass in the lungs than the uniform map **looks outside the lungs**
  (:func:`cell_saliency` says why the uniform map decides);
* **source probe** (the ``~source-probe`` trials, ``probes.source``): the same architecture
  trained to predict the site on the same subsets; its AUC with an interval, and the
  association of site and label on the evaluation images (chi-square test, Cramér's V). The
  DeGrave warning is raised when BOTH hold: the source is predictable (AUC lower bound above
  0.5) and it is associated with the label (p < 0.05 and V >= :data:`MIN_CRAMERS_V`). A
  predictable source alone is normal (sites differ) and harmless when the label does not
  depend on it.

:func:`shortcut_findings` computes everything (pure on the :class:`~lungray.report.load.Sweep`
and its downloaded tables); :func:`shortcut_caveats` turns it into one line per warning for a
headline block; :func:`shortcut_section` renders the section.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from lungray import tracking as T
from lungray.report import html as H

log = logging.getLogger(__name__)

__all__ = ["TITLE", "ShortcutFindings", "shortcut_findings", "shortcut_caveats", "verdict", "shortcut_section",
           "cell_ablation", "cell_saliency", "association", "auc_of"]

TITLE = "Does the model look at the lungs?"

#: the smallest label-site association (Cramér's V) that the DeGrave warning counts: below it a
#: "significant" association on a large evaluation set is too weak to carry a shortcut
MIN_CRAMERS_V = 0.1

#: bootstrap resamples of the evaluation images for AUC intervals
N_BOOT = 400

VIEWS = (("intact", "intact"), ("lungs_blanked", "lungs blanked"), ("outside_blanked", "outside blanked"))


@dataclass
class ShortcutFindings:
    """What the section shows; one row per cell in each table (empty when not measured)."""

    ablation: pd.DataFrame
    saliency: pd.DataFrame
    source: pd.DataFrame
    assoc: Optional[dict] = None  # site x label on the evaluation images: chi2, p, cramers_v, n
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return not (self.ablation.empty and self.saliency.empty and self.source.empty)

    @property
    def shortcut_cells(self) -> pd.DataFrame:
        return self.ablation[self.ablation["uses_shortcut"]] if not self.ablation.empty else self.ablation

    @property
    def outside_cells(self) -> pd.DataFrame:
        return self.saliency[self.saliency["looks_outside"]] if not self.saliency.empty else self.saliency

    @property
    def degrave(self) -> pd.DataFrame:
        return self.source[self.source["degrave"]] if not self.source.empty else self.source


# ---------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------


def auc_of(y: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUC of the last column, or the macro one-vs-rest AUC over the classes present
    (as :func:`lungray.metrics.classification_report` scores ``auc``)."""
    from lungray.metrics import macro_auc, roc_auc_binary, roc_auc_ovr

    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[1] == 2:
        return float(roc_auc_binary(y == 1, p[:, 1]))
    return float(macro_auc(roc_auc_ovr(y, p))[0])


def _boot_idx(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if n else np.zeros((0, 0), dtype=np.int64)


def _auc_ci(y: np.ndarray, probs: Sequence[np.ndarray], n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """Mean AUC over runs with its interval: seeds and images (two-level) with >= 2 runs, the
    images' percentile bootstrap with one."""
    from lungray.report.stats import two_level_ci_boot

    theta = np.array([auc_of(y, p) for p in probs])
    idx = _boot_idx(len(y), n_boot, seed)
    boot = np.array([[auc_of(y[b], p[b]) for p in probs] for b in idx]) if len(idx) else np.zeros((0, len(probs)))
    if len(probs) >= 2:
        ci = two_level_ci_boot(theta, boot, len(y), level, bounds=(0.0, 1.0))
        return float(np.nanmean(theta)), float(ci.low), float(ci.high)
    b = boot[:, 0] if boot.size else np.zeros(0)
    b = b[np.isfinite(b)]
    if len(b) < 2:
        return float(theta[0]) if len(theta) else math.nan, math.nan, math.nan
    a = (1 - level) / 2
    return float(theta[0]), float(np.quantile(b, a)), float(np.quantile(b, 1 - a))


def _mean_ci(scores: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a per-image score ``(runs, images)`` in [0, 1] with its interval: two-level with
    >= 2 runs; one run: Student t over the images (a proportion of 1/0 scores: Clopper-Pearson)."""
    from lungray.report.stats import binom_ci, mean_ci, two_level_ci_scores

    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.shape[0] >= 2:
        ci = two_level_ci_scores(x, level, bounds=(0.0, 1.0))
        return float(ci.estimate), float(ci.low), float(ci.high)
    v = x[0]
    if np.isin(v, (0.0, 1.0)).all():
        ci = binom_ci(int(v.sum()), len(v), level)
    else:
        ci = mean_ci(v, level, (0.0, 1.0))
    return float(ci.estimate), float(ci.low), float(ci.high)


def cell_ablation(tables: Sequence[pd.DataFrame], n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """One cell's ablation row from its runs' ``probes.csv`` tables (the images all runs scored).

    ``chance`` is the majority-class rate of those images; ``uses_shortcut`` when the lungs-
    blanked accuracy's lower bound is above it. The AUC is shown, not used for the flag: on the
    phantom without a planted shortcut (``tests/test_probes_truth.py``) a CNN that learned the
    findings kept a lungs-blanked AUC of 0.66 [0.55, ...] on one of three draws (the blanked
    region's outline and intensity still carry a little of the finding) while its accuracy
    stayed at chance; with the shortcut planted the accuracy was 0.99-1.00 on every draw.
    """
    rows = _common_rows(tables)
    ts = [t.set_index("row").loc[rows] for t in tables]
    y = ts[0]["y_true"].to_numpy(dtype=np.int64)
    k = sum(1 for c in ts[0].columns if c.startswith("intact_prob_"))
    out: dict[str, Any] = {"runs": len(ts), "n_images": len(rows)}
    out["chance"] = float(np.bincount(y).max() / len(y)) if len(y) else math.nan
    for view, _ in VIEWS:
        P = [t[[f"{view}_prob_{j}" for j in range(k)]].to_numpy(dtype=np.float64) for t in ts]
        correct = np.stack([(p.argmax(1) == y).astype(np.float64) for p in P]) if len(y) else np.zeros((len(P), 0))
        out[f"{view}_accuracy"], out[f"{view}_accuracy_low"], out[f"{view}_accuracy_high"] = _mean_ci(correct, level)
        if len(np.unique(y)) >= 2:
            out[f"{view}_auc"], out[f"{view}_auc_low"], out[f"{view}_auc_high"] = _auc_ci(y, P, n_boot, seed, level)
        else:
            out[f"{view}_auc"] = out[f"{view}_auc_low"] = out[f"{view}_auc_high"] = math.nan
    out["uses_shortcut"] = bool(out["lungs_blanked_accuracy_low"] > out["chance"])
    return out


def cell_saliency(tables: Sequence[pd.DataFrame], level: float = 0.95) -> dict[str, Any]:
    """One cell's saliency row: mean lung share of the model's, the randomised model's and the
    image-blind maps, on the images every run has a map for.

    ``looks_outside``: the model learned something (its intact accuracy's lower bound is above
    chance: a map of a model that learned nothing says nothing, ``learned``) and its maps hold
    no more mass in the lungs than a uniform map does (the share's lower bound is at or below the
    lungs' share of the image). Why the uniform map and not the image-blind one decides: on the
    phantom (``tests/test_probes_truth.py``) a width-8 CNN that learned the findings (accuracy
    0.78-0.87) put 0.33-0.35 of its Grad-CAM mass in the lungs, models that learned the planted
    site put 0.25-0.27, and the lungs cover 0.26 of the image; the image-blind map (the mean
    training mask) scores 0.66-0.70, above both, because an 8 x 8 Grad-CAM grid cannot be as
    sharp as a mask. The image-blind and randomised shares are shown beside it as the ceiling
    of a map that ignores the image and the floor of one that ignores the training.
    """
    rows = _common_rows(tables)
    ts = [t.set_index("row").loc[rows] for t in tables]
    share = np.stack([t["cam_lung_share"].to_numpy(dtype=np.float64) for t in ts])
    ok = np.isfinite(share).all(0)
    out: dict[str, Any] = {"runs": len(ts), "n_images": int(ok.sum())}
    y = ts[0]["y_true"].to_numpy(dtype=np.int64)[ok]
    k = sum(1 for c in ts[0].columns if c.startswith("intact_prob_"))
    correct = np.stack([(t[[f"intact_prob_{j}" for j in range(k)]].to_numpy()[ok].argmax(1) == y).astype(np.float64) for t in ts])
    chance = float(np.bincount(y).max() / len(y)) if len(y) else math.nan
    out["learned"] = bool(len(y) and _mean_ci(correct, level)[1] > chance)
    out["cam_share"], out["cam_share_low"], out["cam_share_high"] = _mean_ci(share[:, ok], level)
    # a randomised network's Grad-CAM often has no mass at all (its ReLU leaves nothing): the
    # maps that exist, pooled over the runs (mean per image), with an interval over the images
    rnd = np.stack([t["cam_lung_share_randomised"].to_numpy(dtype=np.float64) for t in ts])[:, ok]
    have = np.isfinite(rnd)
    ok_r = have.any(0)
    pooled = np.where(have, rnd, 0.0).sum(0)[ok_r] / have.sum(0)[ok_r]
    out["randomised_share"], out["randomised_low"], out["randomised_high"] = _mean_ci(pooled[None], level)
    out["randomised_images"] = int(have.sum())
    blind = np.stack([t["blind_lung_share"].to_numpy(dtype=np.float64) for t in ts])[:, ok]
    out["blind_share"] = float(np.nanmean(blind)) if blind.size else math.nan
    area = np.stack([t["lung_area"].to_numpy(dtype=np.float64) for t in ts])[:, ok]
    out["lung_area"] = float(np.nanmean(area)) if area.size else math.nan
    out["looks_outside"] = bool(out["learned"] and out["cam_share_low"] <= out["lung_area"])
    return out


def association(site: np.ndarray, label: np.ndarray, groups: Optional[Sequence] = None) -> dict[str, float]:
    """Chi-square test of independence of site and label, with Cramér's V (0: none, 1: the site
    determines the label); ``n`` the films (or patients) tested.

    ``groups`` (a patient per film, None where unknown): one film per patient is kept (the
    first). A patient's films share a site and usually a label, so an image-level test counts
    each patient several times and is anti-conservative: on the phantom with NO planted
    association (two films per patient on average) it gave Cramér's V 0.20 and p < 0.05 on 2
    of 3 draws.

    >>> a = association(np.array([0, 0, 1, 1] * 10), np.array([0, 0, 1, 1] * 10))
    >>> round(a["cramers_v"], 3), a["p"] < 1e-6
    (1.0, True)
    >>> association(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), groups=["a", "a", "b", "b"])["n"]
    2.0
    """
    from scipy.stats import chi2_contingency

    s, y = np.asarray(site, dtype=np.int64), np.asarray(label, dtype=np.int64)
    if groups is not None:
        g = [f"#row{i}" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for i, v in enumerate(groups)]
        _, first = np.unique(np.asarray(g, dtype=object), return_index=True)
        keep = np.sort(first)
        s, y = s[keep], y[keep]
    per_patient = float(groups is not None)
    _, si = np.unique(s, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    table = np.zeros((si.max() + 1 if len(si) else 0, yi.max() + 1 if len(yi) else 0))
    np.add.at(table, (si, yi), 1)
    if min(table.shape, default=0) < 2:
        return {"chi2": math.nan, "p": math.nan, "cramers_v": math.nan, "n": float(len(s)), "per_patient": per_patient}
    chi2, p, _, _ = chi2_contingency(table, correction=False)
    v = math.sqrt(chi2 / (len(s) * (min(table.shape) - 1)))
    return {"chi2": float(chi2), "p": float(p), "cramers_v": float(v), "n": float(len(s)), "per_patient": per_patient}


def _common_rows(tables: Sequence[pd.DataFrame]) -> list[int]:
    common = set(tables[0]["row"].tolist())
    for t in tables[1:]:
        common &= set(t["row"].tolist())
    return [r for r in tables[0]["row"].tolist() if r in common]


def _cells(runs: pd.DataFrame):
    for (model, size, opt), g in runs.groupby(["model", "train_size", "optimizer"], sort=False):
        yield model, int(size), opt, g


# ---------------------------------------------------------------------------------------------
# from a sweep
# ---------------------------------------------------------------------------------------------


def shortcut_findings(sw: Any, tmp: Path, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> ShortcutFindings:
    """Every table of the section from a loaded sweep (``tmp``: where artifacts are downloaded)."""
    from lungray.config import PROBE_ARM_SUFFIX
    from lungray.report.load import download

    notes: list[str] = []
    client = sw.client()
    done = sw.complete
    probe_tables: dict[str, pd.DataFrame] = {}
    if not done.empty and "probe_n_images" in done.columns:
        for rid in done.loc[done["probe_n_images"].notna(), "run_id"]:
            try:
                probe_tables[rid] = pd.read_csv(download(client, rid, T.PROBES_CSV, tmp))
            except Exception as e:  # noqa: BLE001 - one missing table leaves its run out, said in a note
                notes.append(f"run {rid}: {T.PROBES_CSV} could not be read ({H.first_line(e)}); left out of the lung probes")
    no_probe = len(done) - len(probe_tables)
    if len(done) and no_probe:
        why = _probe_errors(client, done[~done["run_id"].isin(list(probe_tables))]["run_id"])
        notes.append(f"{no_probe} of {len(done)} finished trial(s) have no lung probes"
                     + (f" ({why})" if why else " (no lung masks in the prepared data, probes.lungs off, or trained before issue 24)"))

    ab_rows, sal_rows = [], []
    for model, size, opt, g in _cells(done[done["run_id"].isin(list(probe_tables))]) if probe_tables else []:
        tabs = [probe_tables[r] for r in g["run_id"]]
        base = {"model": model, "train_size": size, "optimizer": opt}
        ab_rows.append({**base, **cell_ablation(tabs, n_boot=n_boot, seed=seed, level=level)})
        sal = cell_saliency(tabs, level=level)
        if sal["n_images"]:
            sal_rows.append({**base, **sal})
    ablation = pd.DataFrame(ab_rows)
    saliency = pd.DataFrame(sal_rows)

    # source probes: their predictions (y_true = site code), the label by row from the study's own runs
    src_rows, assoc = [], None
    probes = sw.probe_runs
    probes = probes[probes["state"] == "complete"] if not probes.empty else probes
    label_by_row = _labels_by_row(sw)
    if not probes.empty:
        preds = {}
        for rid in probes["run_id"]:
            try:
                preds[rid] = pd.read_csv(download(client, rid, T.PREDICTIONS, tmp))
            except Exception as e:  # noqa: BLE001 - said in a note
                notes.append(f"source probe {rid}: {T.PREDICTIONS} could not be read ({H.first_line(e)})")
        if preds and label_by_row is not None:
            any_pred = next(iter(preds.values()))
            rows = [r for r in any_pred["row"].tolist() if r in label_by_row]
            site = any_pred.set_index("row").loc[rows, "y_true"].to_numpy()
            patients = _eval_groups(sw)
            ids = any_pred.set_index("row").loc[rows, "image_id"].astype(str).tolist() if "image_id" in any_pred.columns else None
            groups = [patients.get(i) for i in ids] if patients is not None and ids is not None else None
            assoc = association(site, np.array([label_by_row[r] for r in rows]), groups)
        for model, size, opt, g in _cells(probes[probes["run_id"].isin(list(preds))]):
            frames = [preds[r] for r in g["run_id"]]
            rows = _common_rows(frames)
            fs = [f.set_index("row").loc[rows] for f in frames]
            cols = [c for c in fs[0].columns if c.startswith("prob_")]
            y = fs[0]["y_true"].to_numpy(dtype=np.int64)
            auc, lo, hi = _auc_ci(y, [f[cols].to_numpy(dtype=np.float64) for f in fs], n_boot, seed, level)
            predictable = bool(lo > 0.5)
            associated = bool(assoc is not None and assoc["p"] < 0.05 and assoc["cramers_v"] >= MIN_CRAMERS_V)
            src_rows.append({"model": str(model)[: -len(PROBE_ARM_SUFFIX)] if str(model).endswith(PROBE_ARM_SUFFIX) else model,
                             "train_size": size, "optimizer": opt, "runs": len(fs), "n_images": len(rows), "sites": len(cols),
                             "source_auc": auc, "source_auc_low": lo, "source_auc_high": hi,
                             "predictable": predictable, "degrave": predictable and associated})
    elif sw.config is not None and getattr(getattr(sw.config, "probes", None), "source", False):
        notes.append("the study asked for source probes (probes.source) but none has finished")
    return ShortcutFindings(ablation, saliency, pd.DataFrame(src_rows), assoc, notes)


def _labels_by_row(sw: Any) -> Optional[dict[int, int]]:
    """Dataset row -> label of the evaluation images, from the study's own predictions."""
    for df in (sw.predictions or {}).values():
        if "row" in df.columns and "y_true" in df.columns:
            return dict(zip(df["row"].astype(int), df["y_true"].astype(int)))
    return None


def _coarse_grid(runs: pd.DataFrame) -> str:
    """A warning when some model's Grad-CAM grid is too coarse to say whether a map is on a lung."""
    from lungray.report.gradcam import COARSE_MAP_CELLS

    if "probe_cam_grid" not in runs.columns:
        return ""
    g = runs.dropna(subset=["probe_cam_grid"])
    bad = sorted(set(g.loc[g["probe_cam_grid"] < COARSE_MAP_CELLS, "model"]))
    if not bad:
        return ""
    return (f"The Grad-CAM map of {', '.join(bad)} has fewer than {COARSE_MAP_CELLS} cells per side at this input size: it "
            "cannot say whether it lies on a lung, and its lung share is close to the uniform map's whatever the model looks at.")


def _eval_groups(sw: Any) -> Optional[dict]:
    from lungray.report.tables import eval_groups

    return eval_groups(sw)


def _probe_errors(client, run_ids) -> str:
    errs = []
    for rid in list(run_ids)[:20]:
        try:
            e = client.get_run(rid).data.tags.get(T.PROBE_ERROR_TAG)
        except Exception:  # noqa: BLE001 - informative only
            e = None
        if e:
            errs.append(e)
    return "; ".join(sorted(set(errs))[:3])


# ---------------------------------------------------------------------------------------------
# words
# ---------------------------------------------------------------------------------------------


def _cell(r: Any) -> str:
    return f"{r['model']} at n={int(r['train_size'])}"


def verdict(f: ShortcutFindings) -> str:
    """The section's first sentence: the answer, then what it rests on."""
    if not f.measured:
        return ("Not measured: no trial ran the lung probes (they need lung masks: the phantom, the Radiography "
                "Database's masks/) and the study has no source probe (probes.source).")
    bad = []
    if not f.shortcut_cells.empty:
        bad.append(f"{len(f.shortcut_cells)} of {len(f.ablation)} cell(s) still score above chance with the lungs blanked")
    if not f.outside_cells.empty:
        bad.append(f"{len(f.outside_cells)} of {len(f.saliency)} cell(s) put no more Grad-CAM mass in the lungs than a uniform map")
    if not f.degrave.empty:
        bad.append("the source is predictable from the images and associated with the label (the DeGrave test)")
    if bad:
        return "No: the models use shortcuts outside the lungs (" + "; ".join(bad) + ")."
    checked = []
    if not f.ablation.empty:
        checked.append("with the lungs blanked no cell scores above chance")
    if not f.saliency.empty:
        checked.append("Grad-CAM mass is not outside the lungs" if f.saliency["learned"].any()
                       else "no model beat chance, so its heat maps say nothing")
    if not f.source.empty:
        checked.append("the source is " + ("predictable but not associated with the label" if f.source["predictable"].any()
                                           else "not predictable from the images"))
    return "Yes, as far as these probes can tell: " + "; ".join(checked) + "."


def shortcut_caveats(f: ShortcutFindings) -> list[str]:
    """One line per warning, for a headline block (issue 20's headline; empty when none)."""
    out = []
    for _, r in f.shortcut_cells.iterrows():
        out.append(
            f"Shortcut: {_cell(r)} still scores above chance with the lungs blanked (accuracy "
            f"{H.fmt_ci(r['lungs_blanked_accuracy'], r['lungs_blanked_accuracy_low'], r['lungs_blanked_accuracy_high'])} vs chance "
            f"{r['chance']:.3f}; AUC {H.fmt_ci(r['lungs_blanked_auc'], r['lungs_blanked_auc_low'], r['lungs_blanked_auc_high'])}): "
            "it reads something outside the lungs."
        )
    for _, r in f.outside_cells.iterrows():
        out.append(
            f"Saliency outside the lungs: {_cell(r)} puts {H.fmt_ci(r['cam_share'], r['cam_share_low'], r['cam_share_high'])} of "
            f"its Grad-CAM mass in the lungs, no more than a uniform map ({r['lung_area']:.3f}; a map of where lungs usually "
            f"are: {r['blind_share']:.3f})."
        )
    if not f.degrave.empty and f.assoc is not None:
        r = f.degrave.iloc[int(f.degrave["source_auc"].to_numpy().argmax())]
        out.append(
            f"Source shortcut possible (DeGrave test): the site is predictable from the images (source AUC "
            f"{H.fmt_ci(r['source_auc'], r['source_auc_low'], r['source_auc_high'])}, {_cell(r)}) and associated with the label "
            f"on the evaluation images (Cramér's V {f.assoc['cramers_v']:.2f}, {H.fmt_p_eq(f.assoc['p'])})."
        )
    return out


# ---------------------------------------------------------------------------------------------
# the section
# ---------------------------------------------------------------------------------------------


def has_probes(sweep: Any) -> bool:
    """Whether the sweep measured any shortcut probe (issue 24): lung probes logged by a trial,
    source-probe runs, or a study that asked for them (then the section says what is missing)."""
    cfg = sweep.config
    asked = cfg is not None and getattr(getattr(cfg, "probes", None), "source", False)
    return bool(asked or not sweep.probe_runs.empty or "probe_n_images" in sweep.runs.columns)


def cached_findings(findings: Any, tmp: Path, *, n_boot: int = N_BOOT, seed: int = 0) -> ShortcutFindings:
    """The shortcut tables of a sweep's :class:`~lungray.report.findings.Findings`, computed once
    and kept in its ``extras`` so the section and the headline's caveats read the same numbers."""
    got = findings.extras.get("shortcut")
    if got is None:
        got = findings.extras["shortcut"] = shortcut_findings(findings.sweep, tmp, n_boot=n_boot, seed=seed)
    return got


def shortcut_section(b: Any) -> H.Section:
    """The report section (``b``: the report builder: its findings, output folder, seed)."""
    sid = "shortcuts"
    try:
        f = cached_findings(b.findings, Path(b.tmp) / "shortcut", n_boot=min(int(getattr(b, "n_boot", N_BOOT)), N_BOOT),
                            seed=int(getattr(b, "seed", 0)))
    except Exception as e:  # noqa: BLE001 - a red box in the section, the rest of the report stands
        log.debug("shortcut section failed", exc_info=True)
        return H.Section(sid, TITLE, "", errors=[H.first_line(e) or type(e).__name__])
    parts = [f"<p><b>{H.esc(verdict(f))}</b></p>"]  # the answer first, in one sentence
    caveats = shortcut_caveats(f)
    if caveats:
        parts.append("".join(H.note(c) for c in caveats))
    ci = lambda stem: (lambda r: H.fmt_ci(r[stem], r[f"{stem}_low"], r[f"{stem}_high"]))  # noqa: E731
    if not f.ablation.empty:
        b.csv(f.ablation, "shortcut_ablations.csv")
        df = f.ablation.copy()
        for view, _ in VIEWS:
            df[f"{view}_acc_txt"] = df.apply(ci(f"{view}_accuracy"), axis=1)
            df[f"{view}_auc_txt"] = df.apply(ci(f"{view}_auc"), axis=1)
        df["chance_txt"] = df["chance"].map(lambda v: H.fmt(v))
        df["flag"] = df["uses_shortcut"].map(lambda v: "uses shortcuts" if v else "not above chance")
        parts.append("<h3>Lung ablations</h3>" + H.table(
            df,
            ["model", "train_size", "optimizer", "runs", "n_images", "intact_acc_txt", "lungs_blanked_acc_txt", "chance_txt",
             "lungs_blanked_auc_txt", "outside_blanked_acc_txt", "outside_blanked_auc_txt", "flag"],
            headers={"train_size": "n", "runs": "seeds", "n_images": "images", "intact_acc_txt": "accuracy, intact",
                     "lungs_blanked_acc_txt": "accuracy, lungs blanked", "chance_txt": "chance (majority rate)",
                     "lungs_blanked_auc_txt": "AUC, lungs blanked", "outside_blanked_acc_txt": "accuracy, outside blanked",
                     "outside_blanked_auc_txt": "AUC, outside blanked", "flag": "verdict"},
            text_columns=["model", "optimizer", "flag"],
        ))
    if not f.saliency.empty:
        b.csv(f.saliency, "shortcut_saliency.csv")
        df = f.saliency.copy()
        df["cam_txt"] = df.apply(ci("cam_share"), axis=1)
        df["rnd_txt"] = df.apply(lambda r: H.fmt_ci(r["randomised_share"], r["randomised_low"], r["randomised_high"])
                                 + f" ({int(r['randomised_images'])} maps)", axis=1)
        df["flag"] = df.apply(lambda r: "outside the lungs" if r["looks_outside"] else
                              ("more in the lungs than a uniform map" if r["learned"] else "model not shown above chance: not interpretable"), axis=1)
        parts.append("<h3>Grad-CAM mass inside the lungs</h3>" + H.table(
            df, ["model", "train_size", "optimizer", "runs", "n_images", "cam_txt", "blind_share", "rnd_txt", "lung_area", "flag"],
            headers={"train_size": "n", "runs": "seeds", "n_images": "images", "cam_txt": "share in the lungs, model",
                     "blind_share": "image-blind map (mean training lung mask)", "rnd_txt": "randomised weights",
                     "lung_area": "lungs' share of the image (uniform map)", "flag": "verdict"},
            text_columns=["model", "optimizer", "flag"],
        ))
        coarse = _coarse_grid(b.sweep.complete)
        if coarse:
            parts.append(H.note(coarse))
    if not f.source.empty:
        b.csv(f.source, "shortcut_source_probe.csv")
        df = f.source.copy()
        df["auc_txt"] = df.apply(ci("source_auc"), axis=1)
        df["flag"] = df.apply(lambda r: "DeGrave: predictable and label-associated" if r["degrave"]
                              else ("predictable" if r["predictable"] else "not predictable"), axis=1)
        a = f.assoc
        assoc_line = ("" if a is None else
                      f"<p>Site and label on the evaluation images ({int(a['n'])} {'patients, one film each' if a.get('per_patient') else 'films'}): Cramér's V {H.fmt(a['cramers_v'], 2)} "
                      f"(chi-square {H.esc(H.fmt_p_eq(a['p']))}); 0 means the label does not depend on the site.</p>")
        parts.append("<h3>Source probe</h3>" + assoc_line + H.table(
            df, ["model", "train_size", "optimizer", "runs", "n_images", "sites", "auc_txt", "flag"],
            headers={"train_size": "n", "runs": "seeds", "n_images": "images", "auc_txt": "source AUC",
                     "flag": "verdict"},
            text_columns=["model", "optimizer", "flag"],
        ))
    if not f.ablation.empty:
        fill = getattr(getattr(b.sweep.config, "probes", None), "fill", "kept_mean")
        how = ("the mean of the pixels kept in the same image: no new information, and no black hole the network never saw"
               if fill == "kept_mean" else "black (0)")
        parts.append(H.note(
            f"Blanked pixels take {how} (probes.fill={fill}). The lung outline stays visible as an edge, so a finding that "
            "changes the lungs' shape can still be read with the lungs blanked. Intervals: seeds and evaluation images; "
            "chance is what a constant answer scores (accuracy) or 0.5 (AUC). Grad-CAM maps are of each network's own "
            "predicted class; a randomised network's map often has no mass at all and then counts for nothing.", "muted"))
    runs = b.sweep.complete
    if "probe_seconds" in runs.columns and "train_seconds" in runs.columns and runs["probe_seconds"].notna().any():
        ps, ts = runs["probe_seconds"].dropna(), runs.loc[runs["probe_seconds"].notna(), "train_seconds"]
        parts.append(H.note(f"The lung probes took {ps.mean():.1f} s per trial on average ({100 * ps.sum() / max(ts.sum(), 1e-9):.0f} % "
                            "of the training time of the same trials; the source probes are trials of their own).", "muted"))
    return H.Section(sid, TITLE, "".join(parts), notes=list(f.notes))
