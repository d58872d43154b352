"""Leakage audit between the training pool and the held-out evaluation set.

The public Kaggle chest sets are full of copies: byte-identical files, and augmented copies
(resized, re-encoded, flipped, rotated by 90°) — the training-size study's CT set is *built* from
them (``shared/PROTOCOLS.md`` section 1). A random split then scores a model partly on images it
trained on. The audit finds, for every pool image, evaluation images that are

* **exact** duplicates: same sha256 of the file bytes;
* **near** duplicates: the pool image's 8 dihedral perceptual hashes
  (:func:`lungray.data.hashing.dihedral_hashes`) against the evaluation image's identity hash,
  minimum Hamming distance ``<= max_distance``. Taking the minimum over the dihedral group makes
  a flipped or quarter-turned copy as visible as a resized or re-encoded one.

By default (``data.leakage: drop``) pool rows with any hit are dropped before subsets are drawn;
the report lists counts and example pairs so a user can see what was removed and why.
Comparisons run in chunks with ``np.bitwise_count``: 17k x 3k images x 8 variants is ~0.4 G
popcounts, a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from lungray.data.hashing import DIHEDRAL

_PAIR_COLUMNS = ["pool_row", "eval_row", "distance", "transform"]


@dataclass
class LeakageReport:
    """Pairs found by :func:`audit_leakage` and the pool rows to drop."""

    exact: pd.DataFrame
    near: pd.DataFrame
    drop_idx: np.ndarray
    max_distance: int
    n_pool: int
    n_eval: int
    ids: Optional[np.ndarray] = field(default=None, repr=False)

    def summary(self) -> str:
        return (
            f"leakage audit: {len(self.exact)} exact and {len(self.near)} near-duplicate pairs "
            f"(Hamming <= {self.max_distance}) between {self.n_pool} pool and {self.n_eval} evaluation "
            f"images; {len(self.drop_idx)} pool image(s) affected"
        )

    def to_dict(self, examples: int = 10) -> dict[str, Any]:
        def rows(df: pd.DataFrame) -> list[dict[str, Any]]:
            out = []
            for r in df.head(examples).itertuples(index=False):
                d = {"pool_row": int(r.pool_row), "eval_row": int(r.eval_row), "distance": int(r.distance),
                     "transform": str(r.transform)}
                if self.ids is not None:
                    d["pool_id"] = str(self.ids[r.pool_row])
                    d["eval_id"] = str(self.ids[r.eval_row])
                out.append(d)
            return out

        by_transform = self.near["transform"].value_counts().to_dict() if len(self.near) else {}
        return {
            "max_distance": int(self.max_distance),
            "n_pool": int(self.n_pool),
            "n_eval": int(self.n_eval),
            "exact_pairs": int(len(self.exact)),
            "near_pairs": int(len(self.near)),
            "near_by_transform": {str(k): int(v) for k, v in by_transform.items()},
            "pool_rows_affected": int(len(self.drop_idx)),
            "exact_examples": rows(self.exact),
            "near_examples": rows(self.near.sort_values("distance", kind="stable")),
            "summary": self.summary(),
        }


def _empty_pairs() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c != "transform" else "object") for c in _PAIR_COLUMNS})


def audit_leakage(
    pool_idx: Sequence[int],
    eval_idx: Sequence[int],
    hashes: np.ndarray,
    sha256: Sequence[str],
    max_distance: int = 6,
    ids: Optional[Sequence[str]] = None,
    chunk: int = 2048,
) -> LeakageReport:
    """Exact and near-duplicate pairs (pool row, eval row) and the pool rows they implicate.

    ``hashes`` is ``(N, 8)`` uint64 (dihedral variants, column 0 the image itself) or ``(N,)``
    (identity only: flips/rotations are then not detected); rows index the whole dataset.
    A pair that is exact is not repeated among the near pairs.
    """
    pool = np.asarray(pool_idx, dtype=np.int64)
    ev = np.asarray(eval_idx, dtype=np.int64)
    h = np.asarray(hashes, dtype=np.uint64)
    if h.ndim == 1:
        h = h[:, None]
    sha = np.asarray(sha256, dtype=object)

    # exact: join on sha256
    eval_by_sha: dict[str, list[int]] = {}
    for r in ev:
        if sha[r]:
            eval_by_sha.setdefault(str(sha[r]), []).append(int(r))
    exact_rows = [(int(p), e, 0, "exact") for p in pool if sha[p] for e in eval_by_sha.get(str(sha[p]), [])]
    exact = pd.DataFrame(exact_rows, columns=_PAIR_COLUMNS) if exact_rows else _empty_pairs()
    exact_set = {(p, e) for p, e, _, _ in exact_rows}

    # near: min over the pool image's variants vs the eval image's identity hash
    near_rows = []
    if len(pool) and len(ev) and max_distance >= 0:
        eval_h = h[ev, 0]
        for start in range(0, len(pool), chunk):
            rows = pool[start : start + chunk]
            d = np.bitwise_count(h[rows][:, :, None] ^ eval_h[None, None, :])  # (c, V, E)
            best_v = d.argmin(axis=1)  # (c, E)
            best = np.take_along_axis(d, best_v[:, None, :], axis=1)[:, 0, :]
            pi, ei = np.nonzero(best <= max_distance)
            for a, b in zip(pi, ei):
                pair = (int(rows[a]), int(ev[b]))
                if pair in exact_set:
                    continue
                near_rows.append((*pair, int(best[a, b]), DIHEDRAL[int(best_v[a, b])] if h.shape[1] == 8 else "identity"))
    near = pd.DataFrame(near_rows, columns=_PAIR_COLUMNS) if near_rows else _empty_pairs()
    drop = np.unique(np.concatenate([exact["pool_row"].to_numpy(np.int64), near["pool_row"].to_numpy(np.int64)]))
    return LeakageReport(
        exact=exact,
        near=near,
        drop_idx=drop.astype(np.int64),
        max_distance=int(max_distance),
        n_pool=len(pool),
        n_eval=len(ev),
        ids=None if ids is None else np.asarray(ids),
    )
