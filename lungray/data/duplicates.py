"""The leakage audit's duplicate search over a decoded cache, computed once and kept in the cache.

:func:`find_dataset_duplicates` runs :func:`lungray.data.leakage.find_duplicates` (sha256, content
perceptual hash, keypoints with geometric and photometric verification) on a cache's hashes and
keypoint features and stores the pairs as ``duplicates-<key>.parquet`` next to them, so
``prepare_data`` and ``lungray data check`` share one search (and neither imports the other).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd


def find_dataset_duplicates(root: str | Path, max_distance: int, *, progress: bool = True) -> pd.DataFrame:
    """Every duplicate pair of a decoded cache (:func:`lungray.data.leakage.find_duplicates` on its
    hashes and keypoint features), computed once and kept as ``duplicates-<key>.parquet`` in the cache."""
    from lungray.data.cache import load_features
    from lungray.data.leakage import AUDIT_VERSION, find_duplicates

    root = Path(root)
    key = hashlib.sha256(json.dumps([AUDIT_VERSION, int(max_distance)]).encode()).hexdigest()[:12]
    path = root / f"duplicates-{key}.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    from lungray.data.progress import progress_bar

    cached = pd.read_parquet(root / "manifest.parquet", columns=["sha256"])
    bar = progress_bar(desc="verifying duplicate candidates", unit="pair", enabled=progress)
    try:
        pairs = find_duplicates(np.load(root / "hashes.npy"), cached["sha256"].to_numpy(), int(max_distance),
                                features=load_features(root), progress=bar.update)
    finally:
        bar.close()
    tmp = path.with_name(f".{path.name}.tmp")
    pairs.to_parquet(tmp, index=False)
    tmp.replace(path)
    return pairs
