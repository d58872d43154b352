"""What ``--dry-run`` checks besides the cluster: training sizes against the data, weights offline.

Both are reported as lines under the grid. A training size the dataset cannot supply is also
returned as a problem (the dry run exits with it, as the real run would, before any GPU time);
missing pretrained weights are only reported, because the cluster may be online even when the
machine planning the sweep is not.
"""

from __future__ import annotations

from typing import Optional

from lungray.config import StudyConfig, is_pool_size


def dataset_checks(cfg: StudyConfig) -> tuple[list[str], list[str], Optional[int]]:
    """``(lines, problems, n_pool)`` for a study whose ``data.path`` is set (``--data``) or the phantom.

    Builds the manifest and probes the files as ``lungray data check`` does (no decoding),
    makes the same held-out split ``prepare_data`` will and checks every training size against
    the pool. ``n_pool`` is the pool before the leakage audit (which can only shrink it), used
    to show ``sizes: all`` as a count; ``None`` when no dataset was given. ``problems`` are
    not in ``lines``: the caller says each once (the dry run exits with the first).
    """
    d = cfg.data
    if not d.path and d.source != "phantom":  # the built-in phantom needs no path and no files
        return [f"data: no --data given: training sizes not checked against a {d.source} dataset"], [], None
    import numpy as np

    from lungray.data.check import check_dataset
    from lungray.data.split_plan import groups_of, make_splits
    from lungray.errors import DataError

    counts = [int(n) for n in cfg.sizes if not is_pool_size(n)]
    try:
        rep = check_dataset(d, sizes=counts, echo=None)
    except DataError as e:
        return [f"data: {e}"], [str(e)], None
    lines = [f"data: {d.source}{' at ' + str(d.path) if d.path else ''}: {rep.summary}"]
    problems = list(rep.dataset_problems)
    good = rep.manifest[rep.manifest["problem"] == ""].reset_index(drop=True)
    n_pool = None
    if len(good) and all(rep.class_counts.values()):
        labels = good["class_index"].to_numpy().astype(np.int64)
        try:
            _, _, pool, how = make_splits(labels, groups_of(good["patient_id"].to_numpy()), good["split"].to_numpy(), d)
        except DataError as e:
            # the split's error often wraps a problem the check already found ("the held-out
            # split cannot be made: eval_size = ..."): each problem is said once (issue 20.6)
            if not any(p in str(e) or str(e) in p for p in problems):
                problems.append(str(e))
        else:
            n_pool = int(len(pool))
            lines.append(f"data: training pool {n_pool} images ({how} split, before the leakage audit drops near-duplicates)")
            if cfg.pool_sizes:
                lines.append(f"data: training size 'all' = {n_pool} images (re-counted after the leakage audit at run time)")
            if counts:
                lines.append(f"data: training sizes {', '.join(map(str, sorted(set(counts))))} "
                             + ("fit the pool" if not rep.dataset_problems else "checked"))
    return lines, problems, n_pool


def weights_checks(cfg: StudyConfig) -> list[str]:
    """One line per pretrained model: its weights cached here, or missing (and what to do)."""
    from lungray.errors import ConfigError
    from lungray.models.weights import weights_status

    out = []
    for m in cfg.models:
        try:
            st = weights_status(m)
        except ConfigError as e:
            out.append(f"weights: {e}")
            continue
        if st is not None:
            out.append(f"weights: {st.line()}")
    return out
