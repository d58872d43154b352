"""``logreg``: the 4-class study's logistic-regression baseline (PROTOCOLS.md section 4).

Pixels are average-pooled to ``s x s`` (``ModelConfig.width``, default 32, at most the image
size), flattened and mapped linearly to class scores. The model is fitted in closed form by
:meth:`LogRegNet.fit_full_batch`, which minimises exactly scikit-learn's
``LogisticRegression(C=1, solver="lbfgs")`` objective::

    sum_i s_i * logloss_i + ||W||^2 / (2 C)        (intercept not penalised)

with the same parameterisation as scikit-learn: one weight vector and a sigmoid for two classes
(logits ``[0, z]``), a full multinomial ``W`` for more. (A 2-class softmax would penalise
``||w0||^2 + ||w1||^2`` = half of scikit-learn's penalty and land on a different optimum.) The
solve runs in float64 with the same L-BFGS-B, start and stopping rule as scikit-learn, so
predictions equal scikit-learn's on the same features. The training loop calls ``fit_full_batch`` instead
of SGD epochs; plain SGD on the same module still works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from lungray.models.net import LungrayNet

DEFAULT_POOL = 32
C_DEFAULT = 1.0  # scikit-learn's default inverse regularisation strength


class PixelPool(nn.Module):
    """The 'backbone' of logistic regression: average-pool the image to ``size x size``."""

    lungray_family = "logreg"

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.pool = nn.AdaptiveAvgPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(x)
        if torch.is_grad_enabled() and not y.requires_grad:
            # Nothing before the linear layer has weights, so the pooled pixels would carry no
            # autograd history and Grad-CAM's gradient hook on this layer (the report's panels
            # call it for every model) would never fire. Making them a leaf that records
            # d score / d pixel costs one small matmul and changes no weight gradient.
            y = y.requires_grad_()
        return y


class LogRegHead(nn.Module):
    """Flatten -> linear. Two classes: one logit z returned as ``[0, z]`` (sigmoid = softmax)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.binary = num_classes == 2
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_features, 1 if self.binary else num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.flatten(x))
        if self.binary:
            return torch.cat([torch.zeros_like(z), z], dim=1)
        return z


class LogRegNet(LungrayNet):
    """A :class:`LungrayNet` whose weights come from :meth:`fit_full_batch`."""

    C = C_DEFAULT

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.adapter(self.stem(x))).flatten(1)

    @torch.no_grad()
    def _feature_matrix(self, x: Union[torch.Tensor, Iterable[torch.Tensor]], device: torch.device) -> torch.Tensor:
        chunks = x.split(512) if isinstance(x, torch.Tensor) else x
        return torch.cat([self.features(c.to(device=device, dtype=torch.float32)).double() for c in chunks])

    def fit_full_batch(
        self,
        x: Union[torch.Tensor, Iterable[torch.Tensor]],
        y: torch.Tensor,
        sample_weight: Optional[torch.Tensor] = None,
        *,
        C: Optional[float] = None,
        max_iter: int = 15000,
        tol: float = 1e-10,
    ) -> dict[str, Any]:
        """Fit by minimising scikit-learn's objective on all of ``x`` at once.

        ``x``: the normalised training images (N, C, H, W), or an iterable of such batches
        (in the order of ``y``). ``sample_weight`` (N,) plays scikit-learn's role (a class
        weighting is a sample weighting). Returns ``{"n_iter", "loss", "grad_max",
        "converged"}``; ``loss`` is the objective divided by the weight sum.

        The optimiser is SciPy's L-BFGS-B, started from zeros with scikit-learn's settings
        (``maxls=50``, ``ftol=64 eps``), on the objective scaled by the weight sum as
        scikit-learn scales it; loss and gradient are computed by torch in float64 on the
        model's device. ``torch.optim.LBFGS`` was tried first: on pooled phantom pixels (more
        features than images, strongly correlated) it needed over ten times the iterations and
        still stopped short of the optimum, so its predictions could differ from scikit-learn's.
        """
        import numpy as np
        from scipy.optimize import minimize

        device = next(self.parameters()).device
        feats = self._feature_matrix(x, device)
        y = torch.as_tensor(y, device=device).long().reshape(-1)
        if feats.shape[0] != y.shape[0]:
            raise ValueError(f"fit_full_batch: {feats.shape[0]} images but {y.shape[0]} labels")
        s = (
            torch.ones_like(y, dtype=torch.float64)
            if sample_weight is None
            else torch.as_tensor(sample_weight, device=device, dtype=torch.float64).reshape(-1)
        )
        c = float(self.C if C is None else C)
        head: LogRegHead = self.head  # type: ignore[assignment]
        k_out, d = head.fc.out_features, feats.shape[1]
        s_sum = s.sum()
        y_float = y.double()

        def objective(theta: torch.Tensor) -> torch.Tensor:
            W = theta[: k_out * d].view(k_out, d)
            b = theta[k_out * d :]
            z = feats @ W.T + b
            if head.binary:
                data = F.binary_cross_entropy_with_logits(z[:, 0], y_float, weight=s, reduction="sum")
            else:
                data = (F.cross_entropy(z, y, reduction="none") * s).sum()
            return (data + 0.5 / c * (W * W).sum()) / s_sum

        def fun(theta_np: np.ndarray) -> tuple[float, np.ndarray]:
            theta = torch.from_numpy(theta_np).to(device).requires_grad_()
            with torch.enable_grad():
                loss = objective(theta)
                (grad,) = torch.autograd.grad(loss, theta)
            return float(loss.detach()), grad.detach().cpu().numpy().astype(np.float64)

        res = minimize(
            fun,
            np.zeros(k_out * (d + 1), dtype=np.float64),
            method="L-BFGS-B",
            jac=True,
            options={"maxiter": int(max_iter), "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps},
        )
        theta = torch.from_numpy(res.x)
        loss, grad = fun(res.x)
        grad_max = float(np.abs(grad).max())
        with torch.no_grad():
            head.fc.weight.copy_(theta[: k_out * d].view(k_out, d).to(head.fc.weight))
            head.fc.bias.copy_(theta[k_out * d :].to(head.fc.bias))
        return {"n_iter": int(res.nit), "loss": loss, "grad_max": grad_max, "converged": grad_max <= 1e-6}


def build_logreg(
    cfg: Any,
    num_classes: int,
    *,
    in_chans: int = 1,
    resolution: int = 64,
    ae_weights: Optional[Union[str, Path]] = None,
) -> nn.Module:
    """The :data:`~lungray.models.MODELS` factory for ``logreg`` (head ``linear`` only)."""
    from lungray.models.factory import assemble, input_layers

    stem, adapter, channels = input_layers(cfg, in_chans)
    size = min(cfg.width or DEFAULT_POOL, resolution)
    body = PixelPool(size)
    head = LogRegHead(channels * size * size, num_classes)
    return assemble(
        cfg,
        num_classes=num_classes,
        in_chans=in_chans,
        resolution=resolution,
        stem=stem,
        adapter=adapter,
        body=body,
        channels=channels,
        head=head,
        net_cls=LogRegNet,
    )
