"""What the sweep's parent run records about its data: the splits, a data summary, the leakage audit.

The report reads these three payloads back (``splits.json``, ``data_summary.json``,
``leakage.json``: :mod:`lungray.tracking`), so a report is rebuilt from MLflow alone, with
every nested subset's exact row indices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from lungray.config import StudyConfig


def splits_payload(data: Any, sizes: Sequence[int], seeds: Sequence[int]) -> dict:
    """eval/val/pool/dropped row indices and every nested subset (size x seed) of the sweep."""
    import numpy as np

    subsets: dict[str, dict[str, list[int]]] = {}
    for n in sizes:
        subsets[str(n)] = {str(s): np.asarray(data.subset(int(n), int(s))).tolist() for s in seeds}
    out = {
        "class_names": list(data.class_names),
        "fingerprint": data.fingerprint,
        "eval": np.asarray(data.eval_idx).tolist(),
        "val": np.asarray(data.val_idx).tolist(),
        "pool": np.asarray(data.pool_idx).tolist(),
        "dropped": np.asarray(data.dropped_idx).tolist(),
        "subsets": subsets,
    }
    for e in getattr(data, "external", ()) or ():  # issue 24: which rows each external set scored
        out.setdefault("external", {})[e.name] = {"kind": e.kind, "rows": np.asarray(e.idx).tolist(),
                                                  "fingerprint": e.data.fingerprint if e.data is not None else data.fingerprint}
    if getattr(data, "groups", None) is not None:  # the report resamples patients, not images (issue 19)
        try:
            out["eval_groups"] = eval_groups_payload(data.ids, data.groups, data.eval_idx)
        except (OSError, ValueError, KeyError):  # no manifest to name the images: images resampled
            pass
    return out


def eval_groups_payload(ids: Sequence[Any], groups: Sequence[Any], eval_idx: Sequence[int]) -> dict[str, int]:
    """``image_id -> patient code`` of the evaluation images, codes renumbered 0.. in evaluation
    order (a code says which images share a patient, never who the patient is)."""
    import numpy as np

    ev = np.asarray(eval_idx, dtype=np.int64)
    ids, groups = np.asarray(ids), np.asarray(groups)
    seen: dict = {}
    return {str(ids[i]): seen.setdefault(groups[i].item() if hasattr(groups[i], "item") else groups[i], len(seen)) for i in ev}


def data_summary_payload(data: Any, cfg: StudyConfig) -> dict:
    info = dict(data.info or {})
    return {
        "class_names": list(data.class_names),
        "fingerprint": data.fingerprint,
        "root": str(data.root),
        "class_counts": info.get("class_counts") or data.class_counts(),
        "sizes": list(cfg.sizes),
        "seeds": list(cfg.seeds),
        "n_eval": int(len(data.eval_idx)),
        "n_val": int(len(data.val_idx)),
        "n_pool": int(len(data.pool_idx)),
        "n_dropped": int(len(data.dropped_idx)),
        "source": cfg.data.source,
        "resolution": cfg.data.resolution,
        "preprocess": cfg.data.preprocess,
        "info": info,
    }


def leakage_payload(data: Any) -> dict:
    """The leakage summary, plus the full audit file of these splits when the data layer wrote one."""
    info = dict(data.info or {})
    out: dict[str, Any] = {"summary": info.get("leakage", {"mode": "unknown"})}
    key = info.get("split_key")
    if key:
        p = Path(data.root) / f"leakage-{key}.json"
        if p.exists():
            try:
                out["audit"] = json.loads(p.read_text())
            except ValueError:
                pass
    return out
