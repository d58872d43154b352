"""``logreg`` equals scikit-learn's LogisticRegression(C=1, lbfgs) on the same features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungray.config import ModelConfig
from lungray.models import create_model


def _blob_images(n, k, res, seed):
    """Images whose class shows as a brighter quadrant, plus noise (so classes overlap)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    x = rng.normal(0.0, 1.0, size=(n, 1, res, res)).astype(np.float32)
    h = res // 2
    for i in range(n):
        qi, qj = divmod(int(y[i]) % 4, 2)
        x[i, 0, qi * h : (qi + 1) * h, qj * h : (qj + 1) * h] += 0.35
    return torch.from_numpy(x), torch.from_numpy(y)


def _compare_with_sklearn(model, x_tr, y_tr, x_te, y_te, sample_weight=None):
    from sklearn.linear_model import LogisticRegression

    info = model.fit_full_batch(x_tr, y_tr, sample_weight=sample_weight)
    assert info["converged"], info
    f_tr = model.features(x_tr).detach().double().numpy()
    f_te = model.features(x_te).detach().double().numpy()
    sk = LogisticRegression(C=1.0, solver="lbfgs", tol=1e-12, max_iter=20000)
    sk.fit(f_tr, y_tr.numpy(), sample_weight=None if sample_weight is None else sample_weight.numpy())
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(x_te).double(), dim=1).numpy()
    ours = probs.argmax(1)
    theirs = sk.predict(f_te)
    assert np.array_equal(ours, theirs)
    assert (ours == y_te.numpy()).mean() == sk.score(f_te, y_te.numpy())
    np.testing.assert_allclose(probs, sk.predict_proba(f_te), atol=2e-5)
    w = model.head.fc.weight.detach().double().numpy()
    b = model.head.fc.bias.detach().double().numpy()
    scale = np.abs(sk.coef_).max()
    np.testing.assert_allclose(w, sk.coef_, atol=1e-4 * scale)
    np.testing.assert_allclose(b, sk.intercept_, atol=1e-4 * max(1.0, np.abs(sk.intercept_).max()))
    return ours


def test_pooled_pixel_features_are_block_means():
    x, _ = _blob_images(3, 2, 16, 0)
    model = create_model(ModelConfig(name="logreg", width=8), 2, resolution=16)
    expected = x.numpy().reshape(3, 1, 8, 2, 8, 2).mean(axis=(3, 5)).reshape(3, -1)
    np.testing.assert_allclose(model.features(x).detach().numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [2, 4])
def test_logreg_equals_sklearn_on_synthetic_images(k):
    x, y = _blob_images(200, k, 16, seed=k)
    model = create_model(ModelConfig(name="logreg", width=8), k, resolution=16)
    ours = _compare_with_sklearn(model, x[:140], y[:140], x[140:], y[140:])
    assert (ours == y[140:].numpy()).mean() > 1.0 / k  # it learned something


def test_sample_weights_match_sklearn():
    x, y = _blob_images(160, 3, 16, seed=7)
    sw = torch.from_numpy(np.random.default_rng(0).uniform(0.2, 3.0, size=110))
    model = create_model(ModelConfig(name="logreg", width=8), 3, resolution=16)
    _compare_with_sklearn(model, x[:110], y[:110], x[110:], y[110:], sample_weight=sw)


def test_batches_give_the_same_fit_as_one_tensor():
    x, y = _blob_images(90, 2, 16, seed=3)
    a = create_model(ModelConfig(name="logreg", width=8), 2, resolution=16)
    b = create_model(ModelConfig(name="logreg", width=8), 2, resolution=16)
    a.fit_full_batch(x, y)
    b.fit_full_batch(list(x.split(25)), y)
    assert torch.allclose(a.head.fc.weight, b.head.fc.weight, atol=1e-6)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_logreg_equals_sklearn_on_the_phantom(n_classes):
    phantom = pytest.importorskip("lungray.data.phantom")
    ph = phantom.generate_phantom(240, n_classes=n_classes, resolution=32, difficulty=1.0, seed=0)
    x = torch.from_numpy(np.asarray(ph.images, dtype=np.float32) / 255.0)[:, None]
    x = (x - x[:160].mean()) / x[:160].std()  # the 'pool' normalisation, from the training rows
    y = torch.from_numpy(np.asarray(ph.labels, dtype=np.int64))
    model = create_model(ModelConfig(name="logreg", width=8), n_classes, resolution=32)
    _compare_with_sklearn(model, x[:160], y[:160], x[160:], y[160:])
