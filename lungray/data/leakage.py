"""Leakage audit between the training pool and the held-out evaluation set.

Why: the Kaggle COVID-19 X-ray/CT set used by the training-size study is built from augmented
copies (``shared/PROTOCOLS.md`` section 1), and the radiography sets hold duplicates across
sources, so a random split puts copies of evaluation images into training and inflates every
accuracy in the learning curve. The audit finds them before anything trains:

* exact duplicates: equal sha256 of the file bytes;
* near-duplicates: perceptual hashes (:mod:`lungray.data.hashing`) within ``max_distance``
  bits, taking for each (pool, eval) pair the minimum over the pool image's 8 dihedral hashes
  against the eval image's own hash, so resized, re-encoded, flipped and 90-degree-rotated
  copies are caught. Byte-identical pairs are reported once, as exact.

The comparison is vectorised in chunks of pool rows (XOR + ``np.bitwise_count``), with bounded
memory (32 MB blocks): 17,000 pool x 3,000 eval images x 8 variants, the size of the
training-size study's dataset, took 2.4 s of CPU time on one core.

:func:`audit_leakage` compares one pool with one evaluation set by these two stages.

What ``prepare_data`` uses (issue 11.1) is the search over the WHOLE dataset, every pair once:
:func:`find_duplicates` (sha256, perceptual hash, then keypoints with geometric and photometric
verification, :mod:`lungray.data.keypoints`, which catches the Keras-style rotated, zoomed and
shifted copies the hash misses), cached next to the decoded images. :func:`connected_groups`
turns the pairs (and patient ids) into union-find components, which become the split groups
(:mod:`lungray.data.split_plan`: pairs whose images carry different labels are set aside as
label conflicts or false pairs), so a cluster of copies never straddles pool/val/eval;
:func:`cross_split_pairs` and :func:`leakage_doc` audit a split (pool-eval, val-eval and
pool-val) and describe it for the report.

Burned-in annotations (issue 18): the hashes a cache stores are of the image with its burned-in
text, markers and label boxes inpainted (:func:`lungray.data.burnin.content_image`), and the
keypoint stage ignores them (:mod:`lungray.data.keypoints`), so patients of one site are not
paired because they share its markings. Measured on annotation-heavy data in
``bench/bench_leakage.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from lungray.errors import ConfigError, DataError
from lungray.data.hashing import DIHEDRAL, INVERSE

PAIR_COLUMNS = ["pool_row", "eval_row", "distance", "transform"]

# elements of one (pool chunk x eval) uint64 block: 4M x 8 bytes = 32 MB
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class LeakageReport:
    """What the audit found.

    ``exact`` and ``near``: DataFrames of pairs with columns ``pool_row``, ``eval_row`` (row
    indices into the dataset arrays), ``distance`` (Hamming bits; 0 for exact), ``transform``
    (how the pool image relates to the eval image: ``pool = transform(eval)``, one of
    :data:`lungray.data.hashing.DIHEDRAL`, or ``"identical"`` for byte-identical files), plus
    ``pool_id`` and ``eval_id`` when ids were given. ``drop_idx``: sorted pool rows that match.
    """

    exact: Any  # pandas.DataFrame
    near: Any  # pandas.DataFrame
    drop_idx: np.ndarray
    n_pool: int
    n_eval: int
    max_distance: Optional[int]

    @property
    def pairs(self):
        """Exact and near pairs together, with a ``kind`` column."""
        import pandas as pd

        return pd.concat([self.exact.assign(kind="exact"), self.near.assign(kind="near")], ignore_index=True)

    def filter_pool(self, pool_idx: Sequence[int]) -> np.ndarray:
        """``pool_idx`` without the flagged rows (order kept)."""
        pool_idx = np.asarray(pool_idx, dtype=np.int64)
        return pool_idx[~np.isin(pool_idx, self.drop_idx)]

    def to_dict(self, max_examples: int = 20) -> dict[str, Any]:
        """JSON-able summary: counts, counts by transform and distance, example pairs (with ids)."""
        pairs = self.pairs
        examples = []
        for rec in pairs.head(max_examples).to_dict("records"):
            examples.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in rec.items()})
        return {
            "max_distance": self.max_distance,
            "n_pool": int(self.n_pool),
            "n_eval": int(self.n_eval),
            "exact_pairs": int(len(self.exact)),
            "near_pairs": int(len(self.near)),
            "pool_rows_flagged": int(len(self.drop_idx)),
            "eval_rows_matched": int(pairs["eval_row"].nunique()) if len(pairs) else 0,
            "by_transform": {str(k): int(v) for k, v in pairs["transform"].value_counts().sort_index().items()},
            "by_distance": {str(int(k)): int(v) for k, v in pairs["distance"].value_counts().sort_index().items()},
            "examples": examples,
        }

    def summary(self) -> str:
        """One line for logs and the CLI."""
        near = f"{len(self.near)} near-duplicate pairs (Hamming <= {self.max_distance})" if self.max_distance is not None else "near-duplicates not searched"
        by = self.pairs["transform"].value_counts()
        detail = f" [{', '.join(f'{k} {v}' for k, v in by.items())}]" if len(by) else ""
        return (
            f"leakage audit, {self.n_pool} pool x {self.n_eval} eval images: {len(self.exact)} exact duplicate pairs, "
            f"{near}{detail}; {len(self.drop_idx)} pool images flagged"
        )


def _as_index(idx: Sequence[int], n: int, what: str) -> np.ndarray:
    a = np.asarray(idx)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise DataError(f"{what} must be a 1-D array of row indices, got dtype {a.dtype} shape {a.shape}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= n):
        raise DataError(f"{what} holds row indices outside 0..{n - 1} (min {a.min()}, max {a.max()})")
    return a


def _pairs_frame(pool_rows, eval_rows, dist, transform, ids):
    import pandas as pd

    df = pd.DataFrame(
        {
            "pool_row": np.asarray(pool_rows, dtype=np.int64),
            "eval_row": np.asarray(eval_rows, dtype=np.int64),
            "distance": np.asarray(dist, dtype=np.int64),
            "transform": pd.Series(np.asarray(transform, dtype=object), dtype=object),
        }
    )
    if ids is not None:
        df["pool_id"] = pd.Series(ids[df["pool_row"].to_numpy()], dtype=object).astype(str).to_numpy()
        df["eval_id"] = pd.Series(ids[df["eval_row"].to_numpy()], dtype=object).astype(str).to_numpy()
    return df.sort_values(["eval_row", "pool_row"], kind="stable").reset_index(drop=True)


def audit_leakage(
    pool_idx: Sequence[int],
    eval_idx: Sequence[int],
    hashes: np.ndarray,
    sha256: Sequence[Optional[str]],
    max_distance: Optional[int] = 6,
    ids: Optional[Sequence[str]] = None,
) -> LeakageReport:
    """Find exact and near-duplicates of evaluation images in the training pool.

    Parameters
    ----------
    pool_idx, eval_idx : row indices of the training pool and of the evaluation set (disjoint).
    hashes : (N, 8) uint64, row ``i`` = :func:`lungray.data.hashing.dihedral_hashes` of image
        ``i`` (column 0 = the image itself).
    sha256 : (N,) hex digests of the files' bytes; empty/None entries are never matched.
    max_distance : Hamming threshold for near-duplicates (``data.leakage_max_distance``, default
        6: see :mod:`lungray.data.hashing` for the measured copy and false-match distances);
        ``None`` searches exact duplicates only.
    ids : (N,) image ids, copied into the pair tables and the examples.

    >>> from lungray.data.hashing import dihedral_hashes
    >>> rng = np.random.default_rng(0)
    >>> imgs = rng.integers(0, 255, (3, 32, 32)).astype(np.uint8)
    >>> imgs[2] = imgs[0][:, ::-1]  # row 2 (pool) is a mirrored copy of row 0 (eval)
    >>> H = np.stack([dihedral_hashes(im) for im in imgs])
    >>> rep = audit_leakage([1, 2], [0], H, ["a", "b", "c"])
    >>> rep.near[["pool_row", "eval_row", "distance", "transform"]].values.tolist()
    [[2, 0, 0, 'hflip']]
    >>> rep.drop_idx.tolist()
    [2]
    """
    hashes = np.asarray(hashes)
    if hashes.ndim != 2 or hashes.shape[1] != len(DIHEDRAL):
        raise DataError(f"hashes must have shape (N, {len(DIHEDRAL)}) (lungray.data.hashing.dihedral_hashes per image), got {hashes.shape}")
    if not np.issubdtype(hashes.dtype, np.integer):
        raise DataError(f"hashes must be unsigned 64-bit integers, got dtype {hashes.dtype}")
    hashes = hashes.astype(np.uint64, copy=False)
    n = hashes.shape[0]
    sha = np.asarray(sha256, dtype=object)
    if sha.shape != (n,):
        raise DataError(f"sha256 must have one entry per row ({n}), got shape {sha.shape}")
    if ids is not None:
        ids = np.asarray(ids, dtype=object)
        if ids.shape != (n,):
            raise DataError(f"ids must have one entry per row ({n}), got shape {ids.shape}")
    if max_distance is not None:
        if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)) or not 0 <= max_distance <= 64:
            raise ConfigError(f"data.leakage_max_distance must be an integer in 0..64 (Hamming bits of a 64-bit hash), got {max_distance!r}")
        max_distance = int(max_distance)
    pool = _as_index(pool_idx, n, "pool_idx")
    ev = _as_index(eval_idx, n, "eval_idx")
    both = np.intersect1d(pool, ev)
    if both.size:
        raise DataError(
            f"{both.size} rows are in both the training pool and the evaluation set (first: {both[:5].tolist()}); "
            "the split is broken, rebuild it with lungray.data.splits.split_holdout"
        )

    # exact duplicates: equal sha256
    by_sha: dict[str, list[int]] = {}
    for r in ev:
        s = sha[r]
        if s:
            by_sha.setdefault(str(s), []).append(int(r))
    ex_p, ex_e = [], []
    for r in pool:
        s = sha[r]
        if s and str(s) in by_sha:
            for e in by_sha[str(s)]:
                ex_p.append(int(r))
                ex_e.append(e)
    exact = _pairs_frame(ex_p, ex_e, np.zeros(len(ex_p)), ["identical"] * len(ex_p), ids)

    # near-duplicates: min over the pool image's dihedral variants vs the eval image itself
    nr_p, nr_e, nr_d, nr_t = [], [], [], []
    if max_distance is not None and pool.size and ev.size:
        target = hashes[ev, 0]
        step = max(1, _BLOCK_ELEMENTS // max(1, ev.size))
        for start in range(0, pool.size, step):
            rows = pool[start : start + step]
            variants = hashes[rows]  # (B, 8)
            best = np.full((rows.size, ev.size), 255, dtype=np.uint8)
            arg = np.zeros((rows.size, ev.size), dtype=np.uint8)
            for k in range(len(DIHEDRAL)):
                d = np.bitwise_count(np.bitwise_xor(variants[:, k, None], target[None, :]))
                better = d < best  # strict: ties keep the lower index (identity first)
                best = np.where(better, d, best)
                arg = np.where(better, np.uint8(k), arg)
            i, j = np.nonzero(best <= max_distance)
            nr_p.append(rows[i])
            nr_e.append(ev[j])
            nr_d.append(best[i, j])
            nr_t.append(arg[i, j])
    if nr_p:
        p, e = np.concatenate(nr_p), np.concatenate(nr_e)
        d, t = np.concatenate(nr_d), np.concatenate(nr_t)
    else:
        p = e = d = t = np.zeros(0, dtype=np.int64)
    if len(exact):  # report byte-identical pairs once, as exact
        exact_keys = set(zip(exact["pool_row"].tolist(), exact["eval_row"].tolist()))
        keep = np.array([(int(a), int(b)) not in exact_keys for a, b in zip(p, e)], dtype=bool)
        p, e, d, t = p[keep], e[keep], d[keep], t[keep]
    # the k-th variant of the pool image matches the eval image, so pool = inverse(variant)(eval)
    names = [INVERSE[DIHEDRAL[int(k)]] for k in t]
    near = _pairs_frame(p, e, d, names, ids)

    drop = np.unique(np.concatenate([exact["pool_row"].to_numpy(), near["pool_row"].to_numpy()]).astype(np.int64))
    return LeakageReport(exact=exact, near=near, drop_idx=drop, n_pool=int(pool.size), n_eval=int(ev.size), max_distance=max_distance)


# --------------------------------------------------------------------------------------------
# every duplicate pair of a dataset, clusters, and the audit of a split
# --------------------------------------------------------------------------------------------

AUDIT_VERSION = 3
"""Bump when the duplicate search changes (part of the split key and of the pair-file name, so
splits and audits made by an older search are never reused). 3: burned-in annotations masked,
hashes of the content image, no strong-inlier shortcut, the partner cap (issue 18)."""

DUPLICATE_COLUMNS = ["row_a", "row_b", "kind", "stage", "distance", "ncc", "transform"]
PHASH_SURE = 3  # perceptual-hash pairs this close are copies without the photometric check (issue 18)
STAGES = {
    "sha256": "exact: identical bytes (sha256)",
    "phash": "near: perceptual hash, photometrically confirmed (resized, re-encoded, flipped, quarter-turned)",
    "keypoints": "near: keypoints + affine RANSAC + photometric check (rotated, zoomed, shifted, flipped, brightened)",
}


def _phash_all_pairs(hashes: np.ndarray, rows: np.ndarray, max_distance: int):
    """(a, b, distance, k) for every a < b of ``rows`` whose hashes are within ``max_distance``:
    the minimum over a's 8 dihedral variants against b's own hash (``b = DIHEDRAL[k](a)``)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    target = hashes[rows, 0]
    out_a, out_b, out_d, out_k = [], [], [], []
    step = max(1, _BLOCK_ELEMENTS // max(1, rows.size))
    for start in range(0, rows.size, step):
        blk = np.arange(start, min(start + step, rows.size))
        variants = hashes[rows[blk]]  # (B, 8)
        best = np.full((blk.size, rows.size), 255, dtype=np.uint8)
        arg = np.zeros((blk.size, rows.size), dtype=np.uint8)
        for k in range(len(DIHEDRAL)):
            d = np.bitwise_count(np.bitwise_xor(variants[:, k, None], target[None, :]))
            better = d < best
            best = np.where(better, d, best)
            arg = np.where(better, np.uint8(k), arg)
        i, j = np.nonzero((best <= max_distance) & (np.arange(rows.size)[None, :] > blk[:, None]))
        out_a.append(rows[blk[i]])
        out_b.append(rows[j])
        out_d.append(best[i, j])
        out_k.append(arg[i, j])
    if not out_a:
        return (np.zeros(0, np.int64),) * 4
    return tuple(np.concatenate(x).astype(np.int64) for x in (out_a, out_b, out_d, out_k))


def find_duplicates(
    hashes: np.ndarray,
    sha256: Sequence[Optional[str]],
    max_distance: Optional[int] = 6,
    features: Any = None,
    progress: Optional[Any] = None,
):
    """Every exact or near-duplicate pair among all rows of a dataset, each pair once (``row_a < row_b``).

    Three stages, cheapest first; a pair found by an earlier stage is not searched again:
    ``sha256`` (identical bytes), ``phash`` (dihedral perceptual hash within ``max_distance``
    bits; ``transform`` says how ``row_b`` = transform(``row_a``); with ``features``, a hash pair
    more than ``PHASH_SURE`` bits apart must also pass the photometric check under that map,
    :func:`lungray.data.keypoints.verify_hash_pairs`, whose score is then in ``ncc``) and, when ``features``
    (:class:`lungray.data.keypoints.Features`) are given, ``keypoints`` (:mod:`lungray.data.keypoints`:
    ``distance`` is then the number of RANSAC inliers and ``ncc`` the photometric score).
    ``max_distance=None`` keeps the exact stage only. ``progress(k)`` is called as candidates are verified.

    Returns a DataFrame with :data:`DUPLICATE_COLUMNS`.
    """
    import pandas as pd

    hashes = np.asarray(hashes).astype(np.uint64, copy=False)
    n = hashes.shape[0]
    sha = np.asarray(sha256, dtype=object)
    if sha.shape != (n,):
        raise DataError(f"sha256 must have one entry per row ({n}), got shape {sha.shape}")
    frames = []
    by_sha: dict[str, list[int]] = {}
    for r, s in enumerate(sha):
        if s:
            by_sha.setdefault(str(s), []).append(r)
    ex = [(a, b) for rows in by_sha.values() if len(rows) > 1 for i, a in enumerate(rows) for b in rows[i + 1 :]]
    frames.append(pd.DataFrame({"row_a": [a for a, _ in ex], "row_b": [b for _, b in ex], "kind": "exact", "stage": "sha256",
                                "distance": 0.0, "ncc": np.nan, "transform": "identical"}))
    known = set(ex)
    if max_distance is not None and n > 1:
        a, b, d, k = _phash_all_pairs(hashes, np.arange(n), int(max_distance))
        keep = np.array([(int(x), int(y)) not in known for x, y in zip(a, b)], dtype=bool)
        a, b, d, k = a[keep], b[keep], d[keep], k[keep]
        names = [DIHEDRAL[int(x)] for x in k]
        ncc = np.full(len(a), np.nan)
        if features is not None and len(features) and len(a):
            # look-alike films within 6 bits: confirmed or refused by the photometric check under
            # the hash's dihedral map (issue 18: such pairs joined two patients in the default report)
            from lungray.data.keypoints import MIN_NCC, verify_hash_pairs

            ncc = verify_hash_pairs(features, a, b, names)
            # -1: too little detail to tell, the hash decides; within PHASH_SURE bits the hash decides
            # too (the look-alikes measured were 5-6 bits apart, while a copy resampled from 48 to
            # 36 px keeps too little fine detail to score well but stays within 3 bits)
            keep = (ncc < -0.5) | (ncc >= MIN_NCC) | (d <= PHASH_SURE)
            a, b, d, k, ncc = a[keep], b[keep], d[keep], k[keep], ncc[keep]
            names = [nm for nm, kp in zip(names, keep) if kp]
            ncc = np.where(ncc < -0.5, np.nan, ncc)
        known |= set(zip(a.tolist(), b.tolist()))
        frames.append(pd.DataFrame({"row_a": a, "row_b": b, "kind": "near", "stage": "phash", "distance": d.astype(float),
                                    "ncc": ncc, "transform": names}))
        if features is not None and len(features):
            from lungray.data.keypoints import keypoint_pairs

            kp = keypoint_pairs(features, progress=progress, skip=known)
            kp = kp[np.array([(int(x), int(y)) not in known for x, y in zip(kp["row_a"], kp["row_b"])], dtype=bool)]
            frames.append(pd.DataFrame({"row_a": kp["row_a"].to_numpy(), "row_b": kp["row_b"].to_numpy(), "kind": "near",
                                        "stage": "keypoints", "distance": kp["inliers"].to_numpy(dtype=float),
                                        "ncc": kp["ncc"].to_numpy(dtype=float), "transform": kp["transform"].to_numpy()}))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(DUPLICATE_COLUMNS, [np.int64, np.int64, object, object, float, float, object])})
    out = pd.concat(frames, ignore_index=True)[DUPLICATE_COLUMNS]
    out = out.astype({"row_a": np.int64, "row_b": np.int64, "distance": float, "ncc": float})
    return out.sort_values(["row_a", "row_b"], kind="stable").reset_index(drop=True)


def connected_groups(n: int, pairs: Any = None, groups: Optional[Sequence] = None) -> np.ndarray:
    """(n,) int64 component labels of the graph whose edges are the duplicate ``pairs`` (``row_a``,
    ``row_b``) and "same group" (e.g. the same patient id in ``groups``): union-find, so two
    images end up together when a chain of copies and shared patients links them.

    Labels are numbered by each component's smallest row (deterministic).

    >>> import pandas as pd
    >>> connected_groups(5, pd.DataFrame({"row_a": [0, 3], "row_b": [2, 4]}), groups=["p", "q", "q", "r", "s"]).tolist()
    [0, 0, 0, 1, 1]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    src: list[np.ndarray] = [np.arange(n)]
    dst: list[np.ndarray] = [np.arange(n)]
    if pairs is not None and len(pairs):
        src.append(np.asarray(pairs["row_a"], dtype=np.int64))
        dst.append(np.asarray(pairs["row_b"], dtype=np.int64))
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise DataError(f"groups has shape {g.shape} for {n} rows; give one group per row")
        _, first, inv = np.unique(g.astype(str), return_index=True, return_inverse=True)
        src.append(np.arange(n))
        dst.append(first[inv.reshape(-1)])
    s, d = np.concatenate(src), np.concatenate(dst)
    _, lab = connected_components(coo_matrix((np.ones(len(s)), (s, d)), shape=(n, n)), directed=False)
    # renumber by smallest member row
    first_row = np.full(lab.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first_row, lab, np.arange(n))
    rank = np.argsort(np.argsort(first_row, kind="stable"), kind="stable")
    return rank[lab].astype(np.int64)


def cluster_summary(pairs: Any, n: int, ids: Optional[Sequence[str]] = None, max_examples: int = 5) -> dict[str, Any]:
    """Duplicate clusters (connected components of ``pairs`` alone) with 2 or more images:
    how many, how many images they hold, the largest, and a few examples (ids, largest first)."""
    lab = connected_groups(n, pairs)
    sizes = np.bincount(lab, minlength=int(lab.max()) + 1 if n else 0)
    multi = np.flatnonzero(sizes > 1)
    ex = []
    for c in multi[np.argsort(-sizes[multi], kind="stable")][:max_examples]:
        rows = np.flatnonzero(lab == c)
        names = [str(ids[r]) for r in rows[:6]] if ids is not None else [int(r) for r in rows[:6]]
        ex.append({"size": int(sizes[c]), "members": names, "more": int(max(0, len(rows) - 6))})
    return {
        "n_clusters": int(len(multi)),
        "n_images_in_clusters": int(sizes[multi].sum()) if len(multi) else 0,
        "largest": int(sizes[multi].max()) if len(multi) else 0,
        "examples": ex,
    }


def cross_split_pairs(pairs: Any, splits: dict[str, Sequence[int]]):
    """The duplicate pairs whose two images lie in different splits, with a ``splits`` column
    ("pool-eval", "val-eval", "pool-val"; in the order of ``splits``' keys, ``eval`` last)."""
    n = int(max([int(np.max(v)) + 1 for v in splits.values() if len(v)] + [0]))
    if pairs is not None and len(pairs):
        n = max(n, int(pairs["row_a"].max()) + 1, int(pairs["row_b"].max()) + 1)
    where = np.full(n, -1, dtype=np.int64)
    names = list(splits)
    for k, name in enumerate(names):
        where[np.asarray(splits[name], dtype=np.int64)] = k
    if pairs is None or not len(pairs):
        return pairs.assign(splits=[]) if pairs is not None else None
    sa, sb = where[pairs["row_a"].to_numpy()], where[pairs["row_b"].to_numpy()]
    cross = (sa >= 0) & (sb >= 0) & (sa != sb)
    lo, hi = np.minimum(sa, sb), np.maximum(sa, sb)
    label = np.array([f"{names[x]}-{names[y]}" if c else "" for x, y, c in zip(lo, hi, cross)], dtype=object)
    return pairs.assign(splits=label)[cross].reset_index(drop=True)


def leakage_doc(
    pairs: Any,
    n: int,
    splits: dict[str, Sequence[int]],
    ids: Optional[Sequence[str]] = None,
    max_examples: int = 12,
    labels: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    patients: Optional[Sequence[int]] = None,
) -> dict[str, Any]:
    """The JSON document of an audit (``leakage-<key>.json``, logged to MLflow, rendered by the report).

    ``pairs``: :func:`find_duplicates` over the whole dataset; ``splits``: ``{"pool": rows,
    "val": rows, "eval": rows}`` (as finally used). With ``labels`` (and ``class_names``) every
    example carries its two labels and ``suspect`` (they differ: a label conflict or a false
    pair, issue 18), suspect pairs come first among the examples and are counted in
    ``suspect_pairs``; with ``patients`` (codes, -1 unknown) ``pairs_across_patients`` counts the
    pairs that join two different known patients.
    """
    import pandas as pd

    by_stage = {s: int((pairs["stage"] == s).sum()) for s in STAGES} if len(pairs) else {s: 0 for s in STAGES}
    y = np.asarray(labels, dtype=np.int64) if labels is not None else None
    cls = list(class_names) if class_names is not None else None
    ra = pairs["row_a"].to_numpy(dtype=np.int64) if len(pairs) else np.zeros(0, np.int64)
    rb = pairs["row_b"].to_numpy(dtype=np.int64) if len(pairs) else np.zeros(0, np.int64)
    suspect = (y[ra] != y[rb]) if y is not None else np.zeros(len(ra), bool)
    across = 0
    if patients is not None and len(ra):
        pc = np.asarray(patients, dtype=np.int64)
        across = int(((pc[ra] >= 0) & (pc[rb] >= 0) & (pc[ra] != pc[rb])).sum())
    cross = cross_split_pairs(pairs, splits)
    names = list(splits)
    combos = [f"{names[i]}-{names[j]}" for i in range(len(names)) for j in range(i + 1, len(names))]
    cross_counts = {c: {s: int(((cross["splits"] == c) & (cross["stage"] == s)).sum()) for s in STAGES} for c in combos}
    where = {}
    for name, rows in splits.items():
        for r in np.asarray(rows, dtype=np.int64):
            where[int(r)] = name
    # examples: pairs across labels first (a reader must see them), then cross-split pairs, then
    # one pair per stage, then the rest
    first = pairs[suspect] if suspect.any() else None
    if cross is not None and len(cross):
        first = cross if first is None else pd.concat([first, cross[DUPLICATE_COLUMNS]], ignore_index=True)
    ex_frame = _example_pairs(first, pairs, max_examples)
    examples = []
    for r in ex_frame.itertuples():
        a, b = int(r.row_a), int(r.row_b)
        e = {
            "row_a": a, "row_b": b,
            "id_a": str(ids[a]) if ids is not None else str(a),
            "id_b": str(ids[b]) if ids is not None else str(b),
            "split_a": where.get(a, "-"), "split_b": where.get(b, "-"),
            "stage": r.stage, "transform": r.transform,
            "distance": None if np.isnan(r.distance) else float(r.distance),
            "ncc": None if np.isnan(r.ncc) else float(r.ncc),
        }
        if y is not None:
            e["label_a"] = cls[y[a]] if cls is not None else int(y[a])
            e["label_b"] = cls[y[b]] if cls is not None else int(y[b])
            e["suspect"] = bool(y[a] != y[b])
        examples.append(e)
    return {
        "audit_version": AUDIT_VERSION,
        "n_images": int(n),
        "pairs_by_stage": by_stage,
        "clusters": cluster_summary(pairs, n, ids),
        "cross_split": cross_counts,
        "suspect_pairs": int(suspect.sum()),
        "pairs_across_patients": across,
        "examples": examples,
    }


def _example_pairs(first: Any, rest: Any, k: int):
    """Up to ``k`` rows: ``first``'s, then one of ``rest`` per stage, then the rest, without repeats."""
    import pandas as pd

    picks = [first.head(k)] if first is not None and len(first) else []
    if len(rest):
        picks.append(rest.groupby("stage", sort=False).head(1))
        picks.append(rest)
    if not picks:
        return rest.head(0)
    out = pd.concat([p[DUPLICATE_COLUMNS] for p in picks], ignore_index=True).drop_duplicates(["row_a", "row_b"])
    return out.head(k)
