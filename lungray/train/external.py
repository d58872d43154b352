"""Score a trial's selected model on each external evaluation set (issue 24, point 1).

The model, its normalisation statistics (those of the study's training pool, as at deployment)
and its input size are the held-out evaluation's; only the images differ. Each set gives the
task's flat metrics (``accuracy``, ``auc``, ``recall__COVID``...; logged as ``ext.<name>.<key>``,
:func:`lungray.tracking.ext_key`) and a predictions table like the held-out one, so the report can
resample the same images across runs and pair each run's internal and external scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["evaluate_external"]


def evaluate_external(ctx: Any, setup: Any, net: Any, size: dict) -> dict[str, dict[str, Any]]:
    """``{name: {"metrics": {key: value}, "predictions": DataFrame, "n_images": n}}`` for every
    set in ``ctx.data.external`` (empty when the study has none)."""
    from lungray.train.evaluate import predict

    trial, data, task = ctx.trial, ctx.data, ctx.task
    out: dict[str, dict[str, Any]] = {}
    for e in getattr(data, "external", ()) or ():
        d = e.resolve(data, trial.variant.preprocess)
        idx = np.asarray(e.idx, dtype=np.int64)
        ds = task.dataset(d, idx, augmentation="none", mean=setup.mean, std=setup.std, seed=trial.seed, **size)
        outputs, y, rows = predict(
            net, ds, batch_size=trial.train.eval_batch_size, device=ctx.device, dtype=ctx.dtype,
            channels_last=ctx.channels_last, num_workers=trial.train.num_workers, batch_fn=task.evaluate_batch,
        )
        flat, _, _ = task.report(y, outputs, setup.class_names)
        metrics = {k: float(v) for k, v in flat.items()}
        out[e.name] = {"metrics": metrics, "predictions": task.predictions_frame(d, rows, y, outputs, setup.class_names)}
    return out
