""""What this study found": the answer first, generated from the results (issue 20.1).

A researcher opening a report wants the answer before the evidence: at each training size,
which model leads and whether the lead is real (the paired test of section 5, Holm-adjusted,
read from :class:`~lungray.report.findings.Findings`, never recomputed); how many images each
model needs for the target score, or why that cannot be said (section 6's per-target
verdicts); and every caveat that changes the reading. The same :class:`Headline` is the top
of the report, the sweep's last console lines and the MLflow parent run's description and
``headline.md``, so the three agree word for word and number for number.

Caveats come from providers registered with :func:`caveat_provider` (a name and an order):
each looks at the :class:`~lungray.report.findings.Findings` (and its ``extras``, where a
section may leave what it found) and returns zero or more :class:`Caveat`. A new section adds
its own (issue 24: "does the model look at the lungs?", per-evaluation-set results) without
touching this module's callers::

    @caveat_provider("shortcut", order=65)
    def _shortcut(f):
        probe = f.extras.get("shortcut_probe")
        ...
        return [Caveat("shortcut", "resnet18 scores 0.81 with the lungs masked out: ...")]

A provider that fails is itself a caveat ("could not be checked"), never a lost headline.
"""

from __future__ import annotations

import html as _html
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from lungray.report import budget as B
from lungray.report import tables as TB
from lungray.report.findings import Findings, eval_lacks

__all__ = ["Caveat", "Headline", "caveat_provider", "caveat_providers", "collect_caveats", "make_headline", "TITLE"]

TITLE = "What this study found"

WARN, INFO = "warn", "info"


@dataclass(frozen=True)
class Caveat:
    """One thing that changes how the findings read. ``level``: ``"warn"`` (it changes the
    reading) or ``"info"`` (context a reader needs: the budget, pretrained or not)."""

    key: str
    text: str
    level: str = WARN


Provider = Callable[[Findings], Iterable[Caveat]]
_PROVIDERS: dict[str, tuple[int, Provider]] = {}


def caveat_provider(name: str, order: int = 50) -> Callable[[Provider], Provider]:
    """Register ``fn(findings) -> iterable of Caveat`` under ``name``; caveats are listed by
    ``order`` (lower first), then name. A name registers once."""

    def add(fn: Provider) -> Provider:
        if name in _PROVIDERS:
            raise ValueError(f"caveat provider '{name}' registered twice")
        _PROVIDERS[name] = (int(order), fn)
        return fn

    return add


def caveat_providers() -> list[str]:
    """The registered provider names, in the order their caveats are listed."""
    return [n for n, _ in sorted(_PROVIDERS.items(), key=lambda kv: (kv[1][0], kv[0]))]


def collect_caveats(f: Findings) -> list[Caveat]:
    out: list[Caveat] = []
    for name in caveat_providers():
        try:
            out.extend(_PROVIDERS[name][1](f) or ())
        except Exception as e:  # noqa: BLE001 - a caveat that could not be checked is itself one
            out.append(Caveat(name, f"{name}: could not be checked ({type(e).__name__}: {str(e).strip()[:200]})"))
    return out


# ---------------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------------


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _score(r, digits: int = 3) -> str:
    """``0.786 [0.742, 0.824]`` as section 2 prints it (its :func:`lungray.report.html.fmt_ci`)."""
    from lungray.report.html import fmt_ci

    return fmt_ci(r["mean"], r["ci_low"], r["ci_high"], int(r["n"]), digits)


def _p_words(p: float) -> str:
    from lungray.report.html import fmt_p

    return "Holm-adjusted p " + ("< 0.0001" if fmt_p(p).startswith("<") else f"= {fmt_p(p)}")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass
class Headline:
    """The headline block: a title, what the numbers are, one finding per size, the images a
    target needs per model, the caveats; rendered as text lines, markdown, HTML or a dict."""

    metric_label: str
    what: str
    sizes: list[str]
    targets: list[str]
    caveats: list[Caveat]
    cells: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    def lines(self) -> list[str]:
        """The console form: a title line, then indented findings and caveats."""
        out = [f"{TITLE} ({self.what}):"]
        out += [f"  {s}" for s in self.sizes]
        out += [f"  {t}" for t in self.targets]
        if self.caveats:
            out.append("  Caveats:")
            out += [f"  - {c.text}" for c in self.caveats]
        return out

    def markdown(self) -> str:
        out = [f"## {TITLE}", "", f"*{self.what}*", ""]
        out += [f"- {s}" for s in self.sizes + self.targets]
        if self.caveats:
            out += ["", "**Caveats**", ""]
            out += [f"- {'**' if c.level == WARN else ''}{c.text}{'**' if c.level == WARN else ''}" for c in self.caveats]
        return "\n".join(out) + "\n"

    def html(self) -> str:
        e = _html.escape
        items = "".join(f"<li>{e(s)}</li>" for s in self.sizes + self.targets)
        cav = "".join(f'<li class="{e(c.level)}" data-caveat="{e(c.key)}">{e(c.text)}</li>' for c in self.caveats)
        return (f'<section id="headline" class="headline"><h2>{e(TITLE)}</h2><p class="intro">{e(self.what)}.</p>'
                f'<ul class="findings">{items}</ul>'
                + (f'<h3>Caveats</h3><ul class="caveats">{cav}</ul>' if cav else "") + "</section>")

    def to_dict(self) -> dict:
        cells = self.cells.replace({np.nan: None}).to_dict(orient="records") if not self.cells.empty else []
        return {"title": TITLE, "metric": self.metric_label, "what": self.what, "sizes": self.sizes,
                "targets": self.targets, "caveats": [asdict(c) for c in self.caveats], "cells": cells}


# ---------------------------------------------------------------------------------------------
# the findings per size and per target
# ---------------------------------------------------------------------------------------------


def _size_lines(f: Findings) -> list[str]:
    cells = f.cells()
    if cells.empty:
        return ["No trial has finished yet: nothing to report."]
    multi_opt = f.n_optimizers > 1
    out = []
    for (n, o), g in cells.groupby(["train_size", "optimizer"], sort=True):
        where = f"At {int(n):,} training images" + (f" ({o})" if multi_opt else "")
        best = g[g["best"]]
        if best.empty:
            out.append(f"{where}: no cell has a finite mean.")
            continue
        lead = best.iloc[0]
        runs = f"{int(lead['n'])} run{'s' if int(lead['n']) != 1 else ''}"
        if len(g) == 1:
            out.append(f"{where}: {lead['label']} {_score(lead)} ({runs}; the only model).")
            continue
        others = g[g["label"] != lead["label"]]
        tied = others[np.isclose(others["mean"].astype(float), float(lead["mean"]), atol=5e-4, rtol=0)]
        if len(tied):  # the same number to 3 decimals: nobody leads, whatever the order
            head = (f"{where}: no model leads: {lead['label']} {_score(lead)} ({runs}) and "
                    + _join([f"{r.label} {_score(r._asdict())} ({int(r.n)} run{'s' if int(r.n) != 1 else ''})"
                             for r in tied.itertuples()]) + " are level")
        else:
            head = f"{where}: {lead['label']} leads with {_score(lead)} ({runs})"
        pc = f.paired
        sel = pc[(pc["train_size"] == n) & (pc["optimizer"] == o) & ((pc["model_a"] == lead["model"]) | (pc["model_b"] == lead["model"]))] \
            if pc is not None and not pc.empty else pd.DataFrame()
        parts = []
        for r in sel.itertuples():
            if abs(r.diff_points) < 0.05:
                other = r.model_b if r.model_a == lead["model"] else r.model_a
                vs = f"level with {other} ({r.diff_points:+.1f} points [{r.low_points:+.1f}, {r.high_points:+.1f}])"
            elif r.model_a == lead["model"]:
                vs = f"ahead of {r.model_b} by {r.diff_points:+.1f} points [{r.low_points:+.1f}, {r.high_points:+.1f}]"
            else:
                vs = (f"behind {r.model_a} by {r.diff_points:.1f} points [{r.low_points:+.1f}, {r.high_points:+.1f}] on the "
                      "seeds both have")
            if not np.isfinite(r.p):
                vs += " (one seed: no test of the recipes)"
            else:
                vs += f", {_p_words(r.p_holm)}: " + ("a real difference" if r.significant else "within noise, not a finding")
            parts.append(vs)
        paired_with = set(sel["model_a"]) | set(sel["model_b"]) if not sel.empty else set()
        untested = [r.label for r in g.itertuples() if r.label != lead["label"] and r.model not in paired_with]
        if untested:
            parts.append(f"no paired comparison with {_join(untested)}")
        out.append(head + ("; " + "; ".join(parts) if parts else "") + ".")
    return out


def _target_lines(f: Findings) -> list[str]:
    tab = f.fit_table
    words = _metric_words(f)
    if tab is None or tab.empty:
        return [f"Images needed for a target {words}: no learning-curve fit (it needs complete runs at 3 or more sizes)."]
    from lungray.report.html import fmt_n_ci

    out = []
    for t in f.targets:
        col = TB.target_column(t)
        parts = []
        for r in tab.itertuples():
            est, lo, hi = getattr(r, col), getattr(r, col + "_low"), getattr(r, col + "_high")
            ok = bool(getattr(r, col + "_reliable", True))
            if not r.reliable:
                parts.append(f"{r.label}: cannot be said (the fit is UNRELIABLE: {r.flags})")
            elif not ok:
                parts.append(f"{r.label}: cannot be said ({getattr(r, col + '_flags') or 'unreliable'})")
            elif est is None or not np.isfinite(est):
                parts.append(f"{r.label}: cannot be said (no size reaches it on the fitted curve)")
            else:
                where = str(getattr(r, col + "_where") or "")
                parts.append(f"{r.label}: {fmt_n_ci(est, lo, hi)}" + (f" ({where})" if where else ""))
        out.append(f"Training images for {t:.0%} {words} [95% interval]: " + _same_reason(parts, list(tab["label"])) + ".")
    return out


def _same_reason(parts: list[str], labels: list[str]) -> str:
    """``"a: cannot be said (why); b: cannot be said (why)"`` once: ``"cannot be said for a or b (why)"``."""
    whys = {p.split(": ", 1)[1] for p in parts if ": " in p}
    if len(parts) > 1 and len(whys) == 1 and next(iter(whys)).startswith("cannot be said ("):
        why = next(iter(whys))[len("cannot be said "):]
        return f"cannot be said for {_join(labels).replace(' and ', ' or ')} {why}"
    return "; ".join(parts)


def _metric_words(f: Findings) -> str:
    """The primary metric as a sentence says it: "accuracy", "Dice (images with a finding)"."""
    label = TB.METRICS[f.primary].label if f.primary in TB.METRICS else f.primary
    return label if label[:2].isupper() or label.startswith("Dice") else label[0].lower() + label[1:]


def _what(f: Findings) -> str:
    c = f.cells()
    n_img = pd.to_numeric(c["n_images"], errors="coerce").dropna() if "n_images" in c else pd.Series(dtype=float)
    imgs = f"{int(n_img.max()):,} evaluation images" if len(n_img) and n_img.max() > 0 else "the evaluation set"
    return (f"held-out {_metric_words(f)} on {imgs}; "
            "mean over the runs that count [95% interval over seeds and evaluation images]; differences from the paired "
            "test with Holm's correction (section 5)")


def make_headline(f: Findings) -> Headline:
    """The :class:`Headline` of a sweep's findings."""
    return Headline(metric_label=_metric_words(f), what=_what(f),
                    sizes=_size_lines(f), targets=_target_lines(f), caveats=collect_caveats(f), cells=f.cells())


# ---------------------------------------------------------------------------------------------
# the built-in caveats, in reading order
# ---------------------------------------------------------------------------------------------


@caveat_provider("setup", order=5)
def _setup(f: Findings) -> list[Caveat]:
    """What the models started from and the budget they had: context for every number."""
    bc = f.budget_cells
    if bc.empty:
        return []
    pre = bc.groupby("label", sort=False)["pretrained"].first()
    who = "; ".join(f"{lab} {pre[lab]}" for lab in [*f.labels, *[x for x in pre.index if x not in f.labels]] if lab in pre.index)
    return [Caveat("setup", f"Models: {who}. " + B.schedule_sentence(f.sweep.config), INFO)] if who else []


@caveat_provider("protocol", order=10)
def _protocol(f: Findings) -> list[Caveat]:
    cfg = f.sweep.config
    if cfg is not None and cfg.data.val_is_eval:
        return [Caveat("protocol", "AS PUBLISHED, WITH ITS FLAW: the evaluation set is also the validation set "
                       "(data.val_is_eval); early stopping and the checkpoint were chosen on the images the held-out numbers "
                       "are measured on, so every number above is optimistic.")]
    return []


@caveat_provider("partial", order=15)
def _partial(f: Findings) -> list[Caveat]:
    st = f.status
    if st.get("expected") is None or st["complete"] == st["expected"]:
        return []
    return [Caveat("partial", f"PARTIAL: {st['complete']} of {st['expected']} trials complete ({st['failed']} failed, "
                   f"{st['running']} running, {st['missing']} not started); cells with fewer runs are less certain.")]


@caveat_provider("evaluation", order=12)
def _evaluation(f: Findings) -> list[Caveat]:
    """Issue 18: every trial finished, but on an evaluation set without a class."""
    lacking = eval_lacks(f.sweep)
    if not lacking:
        return []
    return [Caveat("evaluation", f"NOT A COMPLETE EVALUATION: {lacking}, so accuracy, per-class metrics and curves miss "
                   "that class. Re-split the data; `lungray data check` names the cause.")]


@caveat_provider("budget", order=20)
def _budget(f: Findings) -> list[Caveat]:
    """Issue 20.2: points whose runs were still improving when their budget ran out; and a
    fixed-steps budget, under which the curve does not measure data alone whatever the flags."""
    out = []
    cfg = f.sweep.config
    bc = f.budget_cells
    if cfg is not None and cfg.schedule.rule == "steps" and not bc.empty:
        per = bc.dropna(subset=["passes"]).groupby("train_size")["passes"].median()
        if len(per) >= 2:
            lo, hi = per.index.min(), per.index.max()
            out.append(Caveat("budget_rule", (
                f"The curve does not measure data alone: every size had the same budget of {cfg.schedule.max_steps} "
                f"optimisation steps, so {int(lo):,} images got about {per[lo]:.0f} passes over the images and "
                f"{int(hi):,} images about {per[hi]:.0f}; a larger size may score lower than its data allow "
                "(schedule.rule: size or fixed epochs with early stopping measures the data).")))
    s = B.flagged_sentence(bc)
    if s:
        out.append(Caveat("budget", s))
    return out


@caveat_provider("set_apart", order=30)
def _set_apart(f: Findings) -> list[Caveat]:
    s = TB.set_apart_sentence(f.runs)
    return [Caveat("set_apart", s)] if s else []


@caveat_provider("no_interval", order=40)
def _no_interval(f: Findings) -> list[Caveat]:
    c = f.cells()
    if c.empty:
        return []
    bad = c[~(np.isfinite(c["ci_low"].astype(float)) & np.isfinite(c["ci_high"].astype(float)))]
    if bad.empty:
        return []
    where = _join([f"{r.label} at {int(r.train_size):,} ({int(r.n)} run{'s' if int(r.n) != 1 else ''})" for r in bad.itertuples()])
    return [Caveat("no_interval", f"No interval: {where}; one run says nothing about how far a re-run would move "
                   "the number.")]


@caveat_provider("adequacy", order=50)
def _adequacy(f: Findings) -> list[Caveat]:
    ad = f.adequacy
    if ad is None or ad.empty:
        return []
    lo, hi = float(ad["mdd_points"].min()), float(ad["mdd_points"].max())
    rng = f"{lo:.1f}" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f}"
    n_img = int(ad["n_images"].max())
    return [Caveat("adequacy", f"Test-set adequacy: {n_img:,} evaluation images resolve {_metric_words(f)} differences of about "
                   f"{rng} points or more between two models (one run is known to ±{ad['halfwidth_points'].max():.1f} "
                   "points); a smaller gap reads 'within noise' whatever its truth, and only more evaluation images "
                   "(not more seeds) can resolve it.", INFO)]


@caveat_provider("leakage", order=60)
def _leakage(f: Findings) -> list[Caveat]:
    leak = f.sweep.leakage
    if not leak:
        return [Caveat("leakage", "No leakage audit was logged: copies of an image across the training, validation and "
                       "evaluation sets were not searched for.")]
    s = leak.get("summary") or {}
    mode = s.get("mode", "unknown")
    out = []
    grouping = str(s.get("grouping", ""))
    if mode == "off":
        out.append(Caveat("leakage", "Leakage audit off (data.leakage: off): copies across the split were not searched "
                          "for; held-out numbers may be optimistic if the data hold augmented copies."))
    n_cross = int(s.get("cross_split_pairs", 0) or 0)
    if mode == "report" and n_cross:
        out.append(Caveat("leakage", f"{n_cross:,} image pair(s) found by the leakage audit cross the split and were KEPT "
                          "(data.leakage: report): held-out numbers may be optimistic."))
    if mode == "drop" and int(s.get("dropped", 0) or 0):
        out.append(Caveat("leakage", f"The leakage audit dropped {int(s['dropped']):,} training-side image(s) with a copy "
                          "on the evaluation side (data.leakage: drop).", INFO))
    if "image-level split" in grouping:
        out.append(Caveat("leakage", f"Split by image: {grouping}."))
    audit = leak.get("audit") or {}
    n_sus = int(audit.get("suspect_pairs", s.get("suspect_pairs", 0)) or 0)
    if n_sus:
        out.append(Caveat("leakage", f"{n_sus:,} duplicate pair(s) join images with different labels (label conflicts or "
                          "false pairs of the audit; section 9 shows them)."))
    n_pat = int(audit.get("pairs_across_patients", s.get("pairs_across_patients", 0)) or 0)
    if n_pat:
        out.append(Caveat("leakage", f"{n_pat:,} duplicate pair(s) join two different patient ids: false pairs or "
                          "patient-id errors (section 9)."))
    return out


@caveat_provider("lungs", order=66)
def _lungs(f: Findings) -> list[Caveat]:
    """Issue 24's probes: a model that scores with the lungs blanked, saliency outside the lungs,
    a predictable site associated with the label (the tables of "Does the model look at the
    lungs?", computed once per findings)."""
    import tempfile
    from pathlib import Path

    from lungray.report import shortcut as S

    if not S.has_probes(f.sweep):
        return []
    with tempfile.TemporaryDirectory(prefix="lungray-headline-") as tmp:
        sf = S.cached_findings(f, Path(tmp), n_boot=S.N_BOOT, seed=0)
    return [Caveat("lungs", line) for line in S.shortcut_caveats(sf)]


@caveat_provider("site_shortcut", order=65)
def _site_shortcut(f: Findings) -> list[Caveat]:
    """A phantom built with a planted site-label shortcut: a model may score by the site."""
    cfg = f.sweep.config
    d = cfg.data if cfg is not None else None
    c = float(getattr(d, "phantom_site_label_correlation", 0.0) or 0.0) if d is not None and d.source == "phantom" else 0.0
    if c <= 0:
        return []
    return [Caveat("site_shortcut", f"The phantom plants a site shortcut (data.phantom_site_label_correlation = {c:g}): "
                   "the acquisition site, visible in contrast and burned-in markings, predicts the class, so a score "
                   "may come from the site rather than the lungs.")]
