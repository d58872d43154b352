"""Sections 7 and 8 of the report: Grad-CAM panels from each trial's best checkpoint, and the
sanity of the heat maps (the pointing game against a fixed point and randomised weights).

Called by :mod:`lungray.report.build` with its section builder ``b`` (``b.sweep``, ``b.fig``,
``b.csv``, ``b.tmp``); the CAM computation itself is :mod:`lungray.report.gradcam`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from lungray import tracking as T
from lungray.errors import LungrayError
from lungray.report import html as H
from lungray.report import tables as TB
from lungray.report.load import Sweep, download, prediction_matrix

log = logging.getLogger(__name__)

__all__ = ["gradcam_sections", "variant_data", "pointing_verdicts", "verdict"]


def gradcam_sections(b, device: Optional[str], max_pointing: int) -> tuple[H.Section, H.Section]:
    from lungray.report import gradcam as G

    sw = b.sweep
    t7, t8 = "Grad-CAM panels", "Sanity of the heat maps"
    done = sw.complete
    with_ckpt = done[done["run_id"].map(lambda r: sw.checkpoints.get(r, False))]
    if with_ckpt.empty:
        msg = "No trial logged checkpoint/best.pt (tracking.log_checkpoints is off, or no trial finished)."
        return H.Section("gradcam", t7, "", notes=[msg]), H.Section("pointing", t8, "", notes=[msg])
    root = sw.parent_tags.get(T.DATA_ROOT, "")
    if not root or not (Path(root) / "images.npy").exists():
        msg = (f"The prepared images ({T.DATA_ROOT} = '{root}') are not reachable from here; run the report where "
               "the sweep's data directory is mounted to get the panels.")
        return H.Section("gradcam", t7, "", notes=[msg]), H.Section("pointing", t8, "", notes=[msg])

    from lungray.data.prepared import PreparedData

    empty = np.zeros(0, dtype=np.int64)
    data = PreparedData(root=root, class_names=tuple(sw.class_names), eval_idx=empty, val_idx=empty, pool_idx=empty)
    row_of = {str(i): r for r, i in enumerate(data.ids)}
    size = int(with_ckpt["train_size"].max())
    at = with_ckpt[with_ckpt["train_size"] == size]
    seed = int(at["seed"].min())
    at = at[at["seed"] == seed]
    n_opt = done["optimizer"].nunique()
    chosen = []  # (label, run row)
    for m in sw.models:
        for o in sw.optimizers:
            r = at[(at["model"] == m) & (at["optimizer"] == o)]
            if not r.empty and r.iloc[0]["run_id"] in sw.predictions:
                chosen.append((m if n_opt <= 1 else f"{m} / {o}", r.iloc[0]))
    if not chosen:
        msg = f"No trial at n={size}, seed {seed} has both a checkpoint and predictions.csv."
        return H.Section("gradcam", t7, "", notes=[msg]), H.Section("pointing", t8, "", notes=[msg])

    # the same evaluation images for every model: ids present in every prediction file
    mats = [prediction_matrix(sw.predictions[r["run_id"]], sw.class_names) for _, r in chosen]
    ids = mats[0][0]
    for m in mats[1:]:
        ids = np.intersect1d(ids, m[0])
    ids = np.array([i for i in np.sort(ids) if i in row_of])
    notes7 = []
    if ids.size == 0:
        msg = "The evaluation image ids in predictions.csv are not in the prepared data's manifest."
        return H.Section("gradcam", t7, "", notes=[msg]), H.Section("pointing", t8, "", notes=[msg])
    pos = [{i: j for j, i in enumerate(m[0])} for m in mats]
    y = mats[0][1][[pos[0][i] for i in ids]]
    preds = np.stack([m[2][[p[i] for i in ids]].argmax(1) for m, p in zip(mats, pos)])
    correct = preds == y[None]
    picks = G.select_panel_images(ids, y, correct, sw.class_names, per_class=1)
    rows = np.array([row_of[ids[i]] for i, _ in picks], dtype=np.int64)
    imgs = np.asarray(data.images[rows])
    imgs01 = imgs.astype(np.float32) / data.max_value
    row_titles = [f"{sw.class_names[y[i]]} ({kind})\n{ids[i]}" for i, kind in picks]

    masks = data.masks if data.mask_kind in ("lesion", "lesion_boxes") else None  # lesion locations only, not lung masks
    nrm = TB.normal_class(sw.class_names)
    point_cols = [i for i in range(ids.size) if (nrm is None or y[i] != nrm)]
    candidate_rows = np.array([row_of[ids[i]] for i in point_cols], dtype=np.int64)
    if masks is not None and candidate_rows.size:
        has = np.asarray(masks[candidate_rows]).reshape(candidate_rows.size, -1).any(1)
        point_cols = [c for c, h in zip(point_cols, has) if h][:max_pointing]

    tol = G.POINTING_TOLERANCE * data.resolution
    prior, prior_note = _training_prior(sw, masks, size, seed)
    point_rows = np.array([row_of[ids[i]] for i in point_cols], dtype=np.int64) if masks is not None else np.zeros(0, np.int64)
    point_targets = [int(y[i]) for i in point_cols] if point_rows.size else []
    # the region within the tolerance of each lesion: the same for every model and baseline
    near = G.near_lesion(np.asarray(masks[point_rows]), tol) if point_rows.size else None
    panel_targets = [[int(preds[k, i]) for i, _ in picks] for k in range(len(chosen))]
    overlays, cell_titles, layer_info, point_rows_out, agree, shown, errors7, caveats = [], [], [], [], [], [], [], []
    import torch

    from lungray.models import gradcam_target

    for k, (lab, r) in enumerate(chosen):
        try:
            ck_path = download(sw.client(), r["run_id"], T.BEST_CHECKPOINT, b.tmp / "ckpt")
            lm = G.load_checkpoint_model(ck_path, resolution=data.resolution, device=device)
            layers, _ = gradcam_target(lm.model)
            # a variant with its own preprocessing (CLAHE...) is shown the images it was trained on
            vdata = variant_data(sw, data, lm.trial.variant.preprocess)
            vimgs = (imgs if vdata is data else np.asarray(vdata.images[rows])) if rows.size else imgs[:0]
            # one pass for the panel images (the predicted class) and the pointing images (the
            # true class): the maps, the model's own predictions and the map's grid together
            # (a model with its own input_size reads its images resized, and its maps are laid back
            # on the cached images and masks at the cache resolution)
            in_size = lm.trial.model.input_size
            parts = [G.normalise_images(vimgs, data.max_value, lm.norm, size=in_size)]
            if point_rows.size:
                parts.append(G.normalise_images(np.asarray(vdata.images[point_rows]), data.max_value, lm.norm, size=in_size))
            cp = G.cam_pass(lm.model, torch.cat(parts), panel_targets[k] + point_targets)
            maps = G.resize_maps(cp.maps, data.resolution)
            npan = len(picks)
            info = (lab, lm.trial.model.gradcam_layer, ", ".join(G.layer_names(lm.model, layers)),
                    G.describe_grid(cp.grid, data.resolution), lm.epoch)
            caveat = G.map_caveat(lab, cp.grid, data.resolution)
            grid_word = f" · {cp.grid[0]}×{cp.grid[1]} map" if cp.grid[0] else ""
            if rows.size:
                own = cp.logits[:npan].argmax(1)
                ov = [G.overlay(vimgs[j].astype(np.float32) / data.max_value, maps[j]) for j in range(npan)]
                titles = [f"{lab}{grid_word}\n→ {sw.class_names[preds[k, i]]} {'✓' if correct[k, i] else '✗'}" for i, _ in picks]
            point = None
            if near is not None:
                res = G.pointing_game(maps[npan:], near)
                point = _pointing_row(G, lm.model, parts[-1], point_targets, near, res, prior, seed, size=data.resolution)
                point.update({"model": lab, "map": G.describe_grid(cp.grid, data.resolution), "run_id": r["run_id"],
                              "train_size": size, "seed": seed})
            del lm
        except Exception as e:  # noqa: BLE001 - one model's failure is a red box, the others still shown
            log.debug("Grad-CAM failed for %s", lab, exc_info=True)
            errors7.append(f"{lab}: no Grad-CAM panel ({type(e).__name__}: {H.first_line(e)})")
            continue
        layer_info.append(info)
        if caveat:
            caveats.append(caveat)
        if rows.size:
            agree.append((lab, int((own == np.array(panel_targets[k])).sum()), len(picks)))
            overlays.append(ov)
            cell_titles.append(titles)
            shown.append(lab)
        if point is not None:
            point_rows_out.append(point)

    body7 = ""
    if overlays:
        fig = G.panel_figure(imgs01, row_titles, shown, overlays, cell_titles)
        body7 = b.fig(fig, "gradcam_panels", "Grad-CAM panels",
                       "Each row is one evaluation image (its class, and whether most models got it right); each "
                       "column a model, with the Grad-CAM heat map for the class it predicted (✓ right, ✗ wrong).")
    lay = pd.DataFrame(layer_info, columns=["model", "gradcam_layer", "target layer", "map (cells)", "checkpoint epoch"])
    body7 += ("<h3>Target layers</h3>"
              '<p class="muted">gradcam_layer: auto = the backbone family\'s layer, last_conv = the last convolution '
              "(the studies' choice), or a module path; target layer: the module the heat maps were read from; map: "
              f"the resolution of that layer's activation for a {data.resolution} px input (the heat map is this grid, "
              "upsampled to the image: it cannot show detail finer than one cell).</p>"
              + H.table(lay, text_columns=["model", "gradcam_layer", "target layer", "map (cells)"]))
    notes7 += caveats
    if agree:
        ag = pd.DataFrame(agree, columns=["model", "same prediction as predictions.csv", "images"])
        if (ag.iloc[:, 1] < ag.iloc[:, 2]).any():
            notes7.append("A rebuilt checkpoint does not reproduce some logged predictions: the checkpoint, its "
                          "normalisation or the image cache may not match the sweep's.")
        body7 += "<h3>Checkpoint check</h3>" + H.table(ag, text_columns=["model"])
    sec7 = H.Section("gradcam", t7, body7, notes=notes7, errors=errors7,
                     intro=f"The same evaluation images for every model, at the largest training size (n = {size}) and "
                     f"seed {seed}, from each trial's best checkpoint; computed with pytorch-grad-cam.")
    if masks is None:
        sec8 = H.Section("pointing", t8, "", notes=["This dataset has no lesion masks, so the pointing game cannot be "
                                                    "scored (it runs on the phantom, whose lesions are known)."])
        return sec7, sec8
    pt = pd.DataFrame(point_rows_out)
    b.csv(pt, "pointing_game.csv")
    shown = pt.copy()
    if not pt.empty:
        for col in ("score", "prior_score", "randomised_score"):
            shown[col + "_"] = [H.fmt_ci(r[col], r[col + "_low"], r[col + "_high"], digits=2) for _, r in pt.iterrows()]
    body8 = H.table(shown, ["model", "map", "images", "hits", "score_", "prior_score_", "randomised_score_",
                            "random_map_score", "p_vs_prior", "p_vs_randomised", "train_size", "seed"],
                    headers={"map": "map (cells)", "score_": "pointing score [95% CI]",
                             "prior_score_": "fixed point (training prior) [95% CI]",
                             "randomised_score_": "randomised weights [95% CI]",
                             "random_map_score": "uniform random map", "p_vs_prior": "p vs fixed point",
                             "p_vs_randomised": "p vs randomised", "train_size": "size"},
                    formats={"p_vs_prior": H.fmt_p, "p_vs_randomised": H.fmt_p},
                    text_columns=["model", "map", "score_", "prior_score_", "randomised_score_"])
    notes8 = [prior_note] if prior_note else []
    said = []
    for r in point_rows_out:
        for kind, text in pointing_verdicts(r):
            (said if kind == "ok" else notes8).append(text)
    notes8 += caveats
    if said:
        body8 += '<ul class="sentences">' + "".join(f"<li>{H.esc(t)}</li>" for t in said) + "</ul>"
    sec8 = H.Section("pointing", t8, body8, notes=notes8,
                     intro="Pointing game on the positive evaluation images (lesion masks known): the share whose "
                     f"heat-map maximum falls within {tol:.1f} px of the lesion (15 px at 224 px, as in the original "
                     "pointing game), with an exact (Clopper-Pearson) 95% interval. Baselines on the same images: the best "
                     "fixed point on the TRAINING lesion masks under the same tolerance (where lesions usually are: a map "
                     "that scores no better only knows the prior), the same architecture with randomised weights (the sanity check of "
                     "Adebayo et al. 2018), and a uniformly random map (the share of the image within the tolerance of the "
                     "lesion). p: exact McNemar test on the paired per-image hits.")
    return sec7, sec8


#: The pointing game's two baselines, as the sentences of section 8 name them, and what each
#: comparison means when the model's maps are significantly above, significantly below, or
#: indistinguishable from it (exact McNemar on the paired hits, two-sided).
_BASELINES = {
    "prior": ("a fixed point at the usual lesion position",
              {"above": "its heat maps locate this image's lesion better than knowing where lesions usually are.",
               "below": "its heat maps point at this image's lesion less often than a point that only knows where "
                        "lesions usually are.",
               "same": "its heat maps cannot be shown to locate this image's lesion better than knowing where "
                       "lesions usually are."}),
    "randomised": ("the same architecture with random weights",
                   {"above": "the maps depend on what the model learned.",
                    "below": "an untrained network's maps point at the lesion more often: the trained model's maps do "
                             "not show it attending to the lesion.",
                    "same": "the maps cannot be shown to depend on what the model learned."}),
}


def verdict(score: float, baseline: float, p: float, alpha: float = 0.05) -> str:
    """``"above"``, ``"below"`` (significantly, two-sided ``p < alpha``), ``"same"``
    (indistinguishable) or ``""`` when either score or the p-value is missing."""
    if not all(np.isfinite(v) for v in (score, baseline, p)):
        return ""
    if p < alpha and score != baseline:
        return "above" if score > baseline else "below"
    return "same"


def pointing_verdicts(row: dict, alpha: float = 0.05) -> list[tuple[str, str]]:
    """One sentence per baseline of a model's pointing-game row: ``("ok", text)`` when the maps
    are significantly above it, ``("warn", text)`` when below or indistinguishable (a warning
    box in the report). The direction is read from the scores, never assumed."""
    out = []
    for key, (name, meaning) in _BASELINES.items():
        score, base, p = row["score"], row[f"{key}_score"], row[f"p_vs_{key}"]
        v = verdict(score, base, p, alpha)
        if not v:
            continue
        how = {"above": "significantly above", "below": "significantly below", "same": "indistinguishable from"}[v]
        out.append(("ok" if v == "above" else "warn",
                    f"{row['model']}: pointing score {score:.2f} is {how} {name} ({base:.2f}, exact McNemar "
                    f"{H.fmt_p_eq(p)}): {meaning[v]}"))
    return out


def _training_prior(sw: Sweep, masks, size: int, seed: int) -> tuple[Optional[tuple[int, int]], str]:
    """The best fixed point under the pointing game's tolerance on the lesion masks of the TRAINING
    images of the shown runs (:func:`lungray.report.gradcam.prior_point`; the subset of
    ``size`` for ``seed`` from ``splits.json``; the whole pool if the subsets are missing)."""
    from lungray.report import gradcam as G

    if masks is None:
        return None, ""
    sp = sw.splits or {}
    rows = (sp.get("subsets") or {}).get(str(size), {}).get(str(seed)) or sp.get("pool") or []
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return None, "No training rows in splits.json: the fixed-point baseline could not be computed."
    try:
        return G.prior_point(np.asarray(masks[np.sort(rows)]), G.POINTING_TOLERANCE * masks.shape[-1]), ""
    except ValueError as e:
        return None, f"Fixed-point baseline not computed: {e}."


def _pointing_row(G, model, x, targets: list[int], near: np.ndarray, res, prior, seed: int,
                  size: Optional[int] = None) -> dict:
    """A model's pointing game with its baselines (fixed point, randomised weights) on the same
    images: scores, Clopper-Pearson intervals and exact paired p-values. ``near`` is the region
    within the tolerance of each lesion (:func:`lungray.report.gradcam.near_lesion`); ``size``
    the masks' (cache) resolution, when the model read its images at another."""
    nan = float("nan")
    prior_res = G.fixed_point_pointing(prior, near) if prior is not None else None
    rnd = G.cam_pass(G.randomised_copy(model, seed), x, targets).maps
    rnd_res = G.pointing_game(G.resize_maps(rnd, size) if size else rnd, near)
    comp = G.pointing_baselines(res, prior_res if prior_res is not None else res, rnd_res)
    row = {"images": res.n, "hits": res.hits, "random_map_score": res.baseline, "lift": res.lift,
           "prior_point": "" if prior is None else f"{prior[0]},{prior[1]}",
           "p_vs_prior": comp.p_vs_prior if prior_res is not None else nan, "p_vs_randomised": comp.p_vs_randomised}
    for key, r in (("score", res), ("prior_score", prior_res), ("randomised_score", rnd_res)):
        ci = r.interval() if r is not None else None
        row.update({key: r.score if r is not None else nan, f"{key}_low": ci.low if ci else nan,
                    f"{key}_high": ci.high if ci else nan})
    return row


def variant_data(sw: Sweep, data, preprocess: Optional[str]):
    """The prepared images of a variant's preprocessing (same rows), from the sweep's data summary."""
    roots = ((sw.data_summary or {}).get("info") or {}).get("preprocess_roots") or {}
    root = roots.get(preprocess) if preprocess else None
    if not root or Path(root).resolve() == Path(data.root).resolve():
        return data
    if not (Path(root) / "images.npy").exists():
        raise LungrayError(f"the '{preprocess}' images ({root}) are not reachable from here")
    from dataclasses import replace

    return replace(data, root=root)
