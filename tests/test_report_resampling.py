"""lungray.report.resampling: a metric on resample counts equals lungray.metrics on the images
repeated that many times, exactly, for every metric, 2 and 4 classes, ties and absent classes."""

from __future__ import annotations

import numpy as np
import pytest

from lungray import metrics as M
from lungray.report import resampling as R


def _expanded(y, p, w_row):
    idx = np.repeat(np.arange(y.size), w_row.astype(int))
    return y[idx], p[idx]


def _reference(name, y, p):
    flat, per, _ = M.classification_report(y, p, [f"c{j}" for j in range(p.shape[1])], normal=None)
    return flat[name]


@pytest.mark.parametrize("k, n, decimals", [(2, 40, None), (2, 30, 1), (4, 60, None), (4, 25, 1), (3, 12, 1)])
def test_every_metric_equals_lungray_metrics_on_the_resampled_images(k, n, decimals):
    rng = np.random.default_rng(k * 100 + n)
    y = rng.integers(0, k, size=n)
    p = rng.dirichlet(np.ones(k), size=n)
    if decimals is not None:  # ties in the scores
        p = np.round(p, decimals) + 1e-9
        p = p / p.sum(1, keepdims=True)
    w = R.multinomial_weights(n, 30, seed=1)
    w[0] = 1.0  # the original set
    for name in R.RESAMPLED_METRICS:
        got = R.metric_resamples(name, y, p, w)
        for r in range(w.shape[0]):
            yy, pp = _expanded(y, p, w[r])
            ref = _reference(name, yy, pp)
            if np.isnan(ref):
                assert np.isnan(got[r]), (name, r)
            else:
                assert got[r] == pytest.approx(ref, abs=1e-12), (name, r)
    pc = R.per_class_resamples(y, p, w)
    for r in range(w.shape[0]):
        yy, pp = _expanded(y, p, w[r])
        pr, rc, f1, _ = M.per_class_prf(yy, pp.argmax(1), k)
        np.testing.assert_allclose(pc["precision"][r], pr, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(pc["recall"][r], rc, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(pc["f1"][r], f1, atol=1e-12, equal_nan=True)


def test_resample_without_one_class_gives_nan_auc_and_weights_sum_to_n():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    w = np.array([[2.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    auc = R.metric_resamples("auc", y, p, w)
    assert np.isnan(auc[0]) and auc[1] == 1.0
    W = R.multinomial_weights(50, 200, seed=0)
    assert W.shape == (200, 50) and (W.sum(1) == 50).all()
    with pytest.raises(ValueError, match="valid: accuracy"):
        R.metric_resamples("val_loss", y, p, w)
