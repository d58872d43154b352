"""Params, metrics and tags within MLflow's limits: flattened, truncated, redacted, batched.

MLflow rejects a param value over 6000 characters, a tag over 8000, a key over 250 and batches
over 100 params / 1000 metrics (``mlflow/utils/validation.py``); lungray truncates to those
limits instead of failing a trial, writes in batches, and keeps NaN and non-numbers out of the
metrics (an AUC with one class present stays absent rather than poisoning a mean).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Mapping, Optional

from lungray.redact import redact
from lungray.sweep.mlflow_run.connection import retry

# MLflow's limits (mlflow/utils/validation.py); values are truncated to them, not rejected.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists of mappings are indexed (``models.0.name``)."""
    out: dict[str, Any] = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)) and any(isinstance(v, Mapping) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return s if len(s) <= MAX_PARAM_VALUE else s[: MAX_PARAM_VALUE - 3] + "..."


def log_params(c, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches of MLflow's limit; keys/values redacted and truncated to its limits."""
    from mlflow.entities import Param

    items = [Param(k[:MAX_KEY], redact(param_value(v))) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        chunk = items[i : i + MAX_PARAMS_PER_BATCH]
        retry(lambda: c.log_batch(run_id, params=chunk), what="log params")


def log_metrics(c, run_id: str, metrics: Mapping[str, Any], step: int = 0, timestamp: Optional[int] = None) -> int:
    """Log finite numeric metrics in one batch at ``step``; returns how many were logged."""
    from mlflow.entities import Metric

    ts = timestamp if timestamp is not None else int(time.time() * 1000)
    items = [Metric(k[:MAX_KEY], v, ts, int(step)) for k, v in _finite(metrics).items()]
    for i in range(0, len(items), MAX_METRICS_PER_BATCH):
        chunk = items[i : i + MAX_METRICS_PER_BATCH]
        retry(lambda: c.log_batch(run_id, metrics=chunk), what="log metrics")
    return len(items)


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries as floats. NaN (e.g. AUC with one class present) stays
    absent rather than poisoning means; booleans and strings are not metrics."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                import numpy as np

                if isinstance(v, np.generic) and np.issubdtype(type(v), np.number):
                    v = v.item()
                else:
                    continue
            except ImportError:  # pragma: no cover
                continue
        v = float(v)
        if math.isnan(v) or math.isinf(v):
            continue
        out[k] = v
    return out


def set_tags(c, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k[:MAX_KEY], redact(str(v))[:MAX_TAG_VALUE]) for k, v in tags.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        chunk = items[i : i + MAX_PARAMS_PER_BATCH]
        retry(lambda: c.log_batch(run_id, tags=chunk), what="set tags")
