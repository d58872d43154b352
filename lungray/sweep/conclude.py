"""The end of a sweep: its findings computed once, then shown everywhere (issue 20.1 and 20.3).

Once the trials are done and the MLflow parent run is closed, the sweep reads itself back from
MLflow ONCE (:func:`lungray.report.load.load_sweep`, what ``lungray report`` reads) and computes
its :class:`~lungray.report.findings.Findings` with the report's own functions. From that one
object come, in this order:

1. the console's model x size table (the strings of report section 2: mean [95% interval],
   the paired test's mark, the runs set apart) and ``summary.csv`` (one row per cell, the
   same numbers), logged to the parent run;
2. the HTML report, built from the same findings (not recomputed from MLflow);
3. the parent run's headline: its description (``mlflow.note.content``, which the MLflow UI
   shows on the run's page), ``headline.md``/``headline.json``, and one metric set per cell
   (``cell/<model>/n<size>/<metric>``, ``_low``, ``_high``, ``runs``, ``set_apart``,
   ``budget_limited``: :func:`lungray.tracking.cell_metric_key`);
4. "What this study found" (:attr:`Conclusion.headline`): the driver prints it as the
   console's last block, after the MLflow UI, disk and "done" lines, where a user looks.

So the console, ``summary.csv``, the MLflow UI and the report agree number for number. When
the store cannot be read (an outage: the parent is queued for ``lungray mlflow-sync``) the
driver prints the per-trial summary instead (:func:`lungray.sweep.progress.format_summary`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lungray import tracking as T

log = logging.getLogger(__name__)

__all__ = ["Conclusion", "conclude", "console_frame", "console_table", "publish", "parent_metrics", "build_report_step", "SUMMARY_CSV"]

SUMMARY_CSV = "summary.csv"


@dataclass
class Conclusion:
    """What :func:`conclude` produced (for :class:`lungray.sweep.runner.SweepResult`)."""

    summary: Any = None  # pandas.DataFrame: the console's model x size table (report section 2's strings)
    cells: Any = None  # pandas.DataFrame: Findings.cells(), one row per cell (summary.csv)
    report_path: Optional[Path] = None
    report_error: Optional[str] = None
    headline: list[str] = field(default_factory=list)  # the console lines of the headline
    findings: Any = None


def console_frame(findings):
    """Report section 2's table of the primary metric (model x ``n = <size>``, the cells'
    strings as printed there): :attr:`lungray.sweep.runner.SweepResult.summary`."""
    from lungray.report import tables as TB

    f = findings
    return TB.study_table_wide(f.summary, f.primary, f.labels, f.sweep.sizes)


def console_table(findings) -> str:
    """The console's summary: report section 2's table of the primary metric, as printed there."""
    f = findings
    wide = console_frame(f)
    if wide.empty:
        return f"no finished trials with {T.TEST_PREFIX}{f.primary}"
    text = (f"{T.TEST_PREFIX}{f.primary}: mean over the runs that count [95% interval over seeds and evaluation images]; "
            f"★/☆ the best mean, ahead by the paired test or not (as in the report's section 2, {SUMMARY_CSV} and the "
            "MLflow parent's cell/* metrics):\n" + wide.to_string())
    if (wide.map(lambda v: "degenerate" in str(v))).to_numpy().any():
        text += ("\n(degenerate: a constant output, or the same class predicted for every evaluation image with scores "
                 "that do not rank; set apart from its cell everywhere, unless every run of the cell is)")
    return text


def parent_metrics(cells) -> dict[str, float]:
    """The parent run's metrics of each cell (see the module docstring); NaN values are left out."""
    import math

    out: dict[str, float] = {}
    for r in cells.itertuples():
        opt = r.optimizer if cells["optimizer"].nunique() > 1 else None
        vals = {"": r.mean, "low": r.ci_low, "high": r.ci_high, "runs": r.n, "set_apart": r.n_set_apart,
                "budget_limited": r.n_budget_limited}
        for part, v in vals.items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(v):
                out[T.cell_metric_key(r.model, opt, int(r.train_size), r.metric, part)] = v
    return out


def build_report_step(tracking_uri: str, experiment: str, parent_run_id: str, exp_dir: Path, gradcam: bool,
                      echo: Callable[[str], None], print_figures: bool = False,
                      findings: Any = None) -> tuple[Optional[Path], Optional[str]]:
    """Build the HTML report (from ``findings`` when given) and log it to the parent run:
    ``(path, failure line or None)``.

    A report written with failed parts (red boxes) still returns its path, with the one-line
    failure; a report that could not be built at all returns no path and the warning line.
    """
    from lungray.report.build import ReportIncomplete
    from lungray.sweep import mlflow_run as M

    try:
        from lungray.report import build_report

        try:
            from lungray.report.figures import FIGURE_FORMATS

            path, failure = Path(build_report(tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id,
                                              out_dir=str(exp_dir / "report"), gradcam=gradcam,
                                              figure_formats=FIGURE_FORMATS if print_figures else (),
                                              findings=findings)), None
        except ReportIncomplete as e:
            path, failure = e.path, str(e)
        M.retry(lambda: M.client(tracking_uri).log_artifacts(parent_run_id, str(path.parent), "report"))
        echo(f"report: {path}")
        if failure:
            echo(f"error: {failure}")
        return path, failure
    except Exception as e:  # noqa: BLE001 - the sweep's results must never be lost to the report
        line = (f"the report could not be built ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                f"rebuild it with: lungray report --tracking-uri {tracking_uri} --run-id {parent_run_id}")
        echo(f"error: {line}")
        return None, line


def publish(tracking_uri: str, parent_run_id: str, headline, cells, exp_dir: Path) -> None:
    """``summary.csv``, ``headline.md``/``.json``, the description and the cell metrics of the
    parent run (a closed run takes metrics, tags and artifacts like an open one)."""
    from lungray.sweep import mlflow_run as M

    c = M.client(tracking_uri)
    md = headline.markdown()
    M.log_json_artifacts(c, parent_run_id, {SUMMARY_CSV: (exp_dir / SUMMARY_CSV).read_text(), T.HEADLINE_MD: md,
                                            T.HEADLINE_JSON: json.dumps(headline.to_dict(), indent=1, default=str)})
    note = md if len(md) <= M.MAX_TAG_VALUE else md[: M.MAX_TAG_VALUE - 80].rsplit("\n", 1)[0] + "\n\n(cut here: the whole text is headline.md)\n"
    M.set_tags(c, parent_run_id, {T.NOTE: note})
    M.log_metrics(c, parent_run_id, parent_metrics(cells))


def conclude(tracking_uri: str, experiment: str, parent_run_id: str, exp_dir: Path, cfg: Any, *,
             report: bool, echo: Callable[[str], None]) -> Conclusion:
    """Steps 1-4 of the module docstring. Never raises for the findings or the report: a part
    that fails is one ``error:`` line, and the sweep's results stay where they are."""
    from lungray.report.findings import compute_findings
    from lungray.report.headline import make_headline
    from lungray.report.load import load_sweep

    out = Conclusion()
    with tempfile.TemporaryDirectory(prefix="lungray-end-") as tmp:
        try:
            sweep = load_sweep(tracking_uri, parent_run_id=parent_run_id, artifact_dir=Path(tmp))
            f = compute_findings(sweep)
            cells = f.cells()
            cells.to_csv(exp_dir / SUMMARY_CSV, index=False)
            out.cells, out.findings = cells, f
            out.summary = console_frame(f)
        except Exception as e:  # noqa: BLE001 - one line; the report step then rebuilds from MLflow itself
            log.debug("findings failed", exc_info=True)
            echo(f"error: the sweep's findings could not be computed ({type(e).__name__}: {str(e).strip()[:300]}); "
                 f"rebuild them with: lungray report --tracking-uri {tracking_uri} --run-id {parent_run_id}")
            if report:
                out.report_path, out.report_error = build_report_step(tracking_uri, experiment, parent_run_id, exp_dir,
                                                                      cfg.tracking.gradcam, echo, cfg.tracking.print_figures)
            return out
        echo("")
        echo(console_table(f))
        if report:
            out.report_path, out.report_error = build_report_step(tracking_uri, experiment, parent_run_id, exp_dir,
                                                                  cfg.tracking.gradcam, echo, cfg.tracking.print_figures, findings=f)
        headline = make_headline(f)
        try:
            publish(tracking_uri, parent_run_id, headline, cells, exp_dir)
        except Exception as e:  # noqa: BLE001 - the store went away after the report: say so, keep the files
            log.debug("publishing the headline failed", exc_info=True)
            echo(f"warning: the headline was not logged to MLflow ({type(e).__name__}: {str(e).strip()[:200]}); "
                 f"it is in {exp_dir / SUMMARY_CSV} and the report")
        out.headline = headline.lines()  # the driver prints them as its last lines
    return out
