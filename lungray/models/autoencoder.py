"""``ae_encoder``: the training-size study's encoder-based classifier (PROTOCOLS.md section 1).

A small convolutional autoencoder is pretrained by reconstruction on the *unlabelled training
pool* (never on evaluation or validation images), then its encoder feeds a DenseNet-121 with
the chosen head. The layer sizes are the protocol's table, for an input of ``res`` px
(any ``res`` divisible by 4; the study used 256)::

    Encoder  Conv 16 -> Conv 16 -> MaxPool -> Conv 8 -> Conv 8 -> Conv 8 -> Conv 3 -> MaxPool
             = the code, res/4 x res/4 x 3
    Decoder  ConvT 3 -> ConvT 8 -> ConvT 8 -> ConvT 8 -> UpSample -> ConvT 16 -> ConvT 16
             -> UpSample -> Conv (input channels)

All 3x3, 'same' padding, ReLU except the output (linear, because the images are z-scored). With
3 input channels (``input_mode: repeat3``, the study's 256x256x3 input) this has the protocol's
10,714 weights (448 + 2,320 + 1,160 + 584 + 584 + 219 for the encoder, 84 + 224 + 584 + 584 +
1,168 + 2,320 + 435 for the decoder); on the 1-channel gray image (``in_chans1``) the first and
last layer hold 160 and 145 weights instead.

The study trained its autoencoder on 4000 COVID images: ``TrainConfig.ae_pretrain_class: COVID``
with ``ae_pretrain_images: 4000`` does the same on the training pool's COVID images (never the
evaluation or validation images); by default the whole unlabelled pool is used.

:func:`ensure_autoencoder` trains it once per (dataset, resolution, seed, epochs), caches the
result at ``<data.root>/ae/ae-r{res}-s{seed}-e{epochs}.pt`` and returns the path; every trial
that needs it reuses the file (channels and class, when set, are part of the name). A file lock (``fcntl.lockf``, which also works on NFS) plus a
per-process lock make concurrent trials wait for one training instead of each running its own,
and the file is written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lungray.errors import ConfigError, DataError
from lungray.models.specs import input_channels

log = logging.getLogger(__name__)

DENSENET = "densenet121"  # section 1: the encoder feeds DenseNet-121
AE_LR = 1e-3  # Keras' Adam default, as the study's autoencoder notebook


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


def _convt(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c_in, c_out, 3, padding=1)


def make_encoder(in_chans: int = 1) -> nn.Sequential:
    """The encoder: ``in_chans`` x res x res -> 3 x res/4 x res/4."""
    return nn.Sequential(
        OrderedDict(
            conv1=_conv(in_chans, 16),
            act1=nn.ReLU(inplace=True),
            conv2=_conv(16, 16),
            act2=nn.ReLU(inplace=True),
            pool1=nn.MaxPool2d(2),
            conv3=_conv(16, 8),
            act3=nn.ReLU(inplace=True),
            conv4=_conv(8, 8),
            act4=nn.ReLU(inplace=True),
            conv5=_conv(8, 8),
            act5=nn.ReLU(inplace=True),
            conv6=_conv(8, 3),
            act6=nn.ReLU(inplace=True),
            pool2=nn.MaxPool2d(2),
        )
    )


def make_decoder(out_chans: int = 1) -> nn.Sequential:
    """The decoder: 3 x res/4 x res/4 -> ``out_chans`` x res x res."""
    return nn.Sequential(
        OrderedDict(
            deconv1=_convt(3, 3),
            act1=nn.ReLU(inplace=True),
            deconv2=_convt(3, 8),
            act2=nn.ReLU(inplace=True),
            deconv3=_convt(8, 8),
            act3=nn.ReLU(inplace=True),
            deconv4=_convt(8, 8),
            act4=nn.ReLU(inplace=True),
            up1=nn.Upsample(scale_factor=2, mode="nearest"),
            deconv5=_convt(8, 16),
            act5=nn.ReLU(inplace=True),
            deconv6=_convt(16, 16),
            act6=nn.ReLU(inplace=True),
            up2=nn.Upsample(scale_factor=2, mode="nearest"),
            out=_conv(16, out_chans),
        )
    )


class ConvAutoencoder(nn.Module):
    """Encoder + decoder of section 1; ``forward`` reconstructs the input."""

    def __init__(self, in_chans: int = 1):
        super().__init__()
        self.in_chans = in_chans
        self.encoder = make_encoder(in_chans)
        self.decoder = make_decoder(in_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class AEClassifierBody(nn.Module):
    """Encoder -> DenseNet-121 trunk: the backbone of ``ae_encoder``."""

    lungray_family = "ae_encoder"

    def __init__(self, encoder: nn.Module, densenet: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.densenet = densenet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.densenet(self.encoder(x))


def _check_resolution(resolution: int) -> None:
    if resolution % 4 != 0 or resolution < 4:
        raise ConfigError(
            f"model 'ae_encoder' needs a resolution divisible by 4 (two 2x2 poolings), got {resolution}; "
            "set data.resolution to e.g. 128 or 256"
        )


def load_encoder_weights(encoder: nn.Module, path: Union[str, Path]) -> dict[str, Any]:
    """Load the encoder half of an :func:`ensure_autoencoder` file; return its metadata."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ae_weights: {p} does not exist; call lungray.models.ensure_autoencoder first")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        sd = ckpt["model"]
    except Exception as e:  # a truncated or foreign file: say which one
        raise ConfigError(f"ae_weights: cannot read autoencoder file {p} ({type(e).__name__}: {e})") from e
    enc = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    try:
        encoder.load_state_dict(enc, strict=True)
    except RuntimeError as e:
        raise ConfigError(
            f"ae_weights: autoencoder file {p} does not fit this encoder ({str(e).splitlines()[0]}); "
            "was it trained for another number of input channels?"
        ) from None
    return {k: v for k, v in ckpt.items() if k != "model"}


def build_ae_encoder(
    cfg: Any,
    num_classes: int,
    *,
    in_chans: int = 1,
    resolution: int = 256,
    ae_weights: Optional[Union[str, Path]] = None,
) -> nn.Module:
    """The :data:`~lungray.models.MODELS` factory for ``ae_encoder``.

    ``cfg.pretrained`` applies to the DenseNet-121 (``true``: ImageNet weights from the timm
    hub, as the study's Keras DenseNet; a path: a local DenseNet-121 file). ``ae_weights`` is
    the :func:`ensure_autoencoder` file; without it the encoder starts from random weights.
    ``input_mode`` does not apply: the encoder takes the cached channels and its 3-channel
    code is what the DenseNet sees.
    """
    from lungray.models.factory import assemble, timm_body

    _check_resolution(resolution)
    encoder = make_encoder(in_chans)
    if ae_weights is not None:
        load_encoder_weights(encoder, ae_weights)
    densenet, call = timm_body(DENSENET, in_chans=3, resolution=resolution // 4, pretrained=cfg.pretrained)
    if call != "forward":  # pragma: no cover - timm's DenseNet accepts global_pool=''
        raise ConfigError("ae_encoder: timm's densenet121 did not build without its classifier")
    body = AEClassifierBody(encoder, densenet)
    return assemble(
        cfg,
        num_classes=num_classes,
        in_chans=in_chans,
        resolution=resolution,
        stem=nn.Identity(),
        adapter=nn.Identity(),
        body=body,
        channels=in_chans,
    )


# --------------------------------------------------------------------------------------------
# Pretraining, cached
# --------------------------------------------------------------------------------------------

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def ae_cache_path(
    data: Any,
    seed: int,
    *,
    epochs: int,
    resolution: Optional[int] = None,
    max_images: Optional[int] = None,
    mean: Optional[Any] = None,
    std: Optional[Any] = None,
    in_chans: int = 1,
    pretrain_class: Optional[str] = None,
) -> Path:
    """``<data.root>/ae/ae-r{res}-s{seed}-e{epochs}.pt`` (+ ``-c{chans}`` / ``-k{class}`` / ``-n{max}`` / ``-z{hash}`` if set)."""
    res = int(resolution or data.resolution)
    name = f"ae-r{res}-s{int(seed)}-e{int(epochs)}"
    if in_chans != 1:
        name += f"-c{int(in_chans)}"
    if pretrain_class is not None:
        name += "-k" + hashlib.sha256(str(pretrain_class).encode()).hexdigest()[:8]
    if max_images is not None:
        name += f"-n{int(max_images)}"
    if mean is not None or std is not None:
        name += "-z" + hashlib.sha256(f"{mean!r},{std!r}".encode()).hexdigest()[:8]
    return Path(data.root) / "ae" / f"{name}.pt"


@contextlib.contextmanager
def _thread_lock(key: str) -> Iterator[None]:
    with _THREAD_LOCKS_GUARD:
        lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
    with lock:
        yield


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on ``path`` (POSIX record lock; O_EXCL where no fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    if fcntl is not None:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return
    while True:  # pragma: no cover - Windows
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR)
            break
        except FileExistsError:
            time.sleep(0.5)
    try:  # pragma: no cover
        yield
    finally:  # pragma: no cover
        os.close(fd)
        os.unlink(path)


def _resolve_device(device: Any) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_rows(data: Any, rows: np.ndarray, resolution: int, in_chans: int = 1) -> torch.Tensor:
    """(B, in_chans, res, res) float32 in [0, 1] for sorted pool rows (memory-mapped reads; the
    gray image repeated for 3 channels)."""
    imgs = np.asarray(data.images[rows], dtype=np.float32) / float(data.max_value)
    x = torch.from_numpy(imgs)[:, None]
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x.expand(-1, in_chans, -1, -1) if in_chans != 1 else x


def _per_channel(v: Any, in_chans: int) -> torch.Tensor:
    """A mean/std (one number or one per channel) as a (1, C, 1, 1) tensor."""
    t = torch.as_tensor(np.asarray(v, dtype=np.float32).reshape(-1))
    return (t.expand(in_chans) if t.numel() == 1 else t).reshape(1, -1, 1, 1)


def pretrain_rows(data: Any, seed: int, max_images: Optional[int] = None, pretrain_class: Optional[str] = None) -> np.ndarray:
    """The pool rows the autoencoder trains on: the pool (of ``pretrain_class`` only, when
    set), ``max_images`` of them drawn with ``default_rng(seed)``; sorted."""
    rows = np.sort(np.asarray(data.pool_idx, dtype=np.int64))
    if pretrain_class is not None:
        names = [str(c) for c in data.class_names]
        if str(pretrain_class) not in names:
            raise ConfigError(f"train.ae_pretrain_class '{pretrain_class}' is not a class of the data; classes: {', '.join(names)}")
        rows = rows[np.asarray(data.labels)[rows] == names.index(str(pretrain_class))]
    if rows.size == 0:
        what = f" has no '{pretrain_class}' image" if pretrain_class is not None else " is empty"
        raise DataError(f"ensure_autoencoder: the training pool of {data.root}{what}; nothing to pretrain on")
    if max_images is not None and max_images < rows.size:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=int(max_images), replace=False))
    return rows


def pretrain_autoencoder(
    data: Any,
    seed: int,
    *,
    epochs: int,
    device: Any = "cpu",
    resolution: Optional[int] = None,
    batch_size: int = 32,
    max_images: Optional[int] = None,
    mean: Optional[Any] = None,
    std: Optional[Any] = None,
    in_chans: int = 1,
    pretrain_class: Optional[str] = None,
) -> dict[str, Any]:
    """Train the autoencoder by MSE reconstruction on ``data.pool_idx`` only; return a checkpoint dict.

    Only rows of the training pool are ever read (:func:`pretrain_rows`: of one class when
    ``pretrain_class`` is set, ``max_images`` of them drawn with ``default_rng(seed)`` when
    set). Inputs (``in_chans`` copies of the gray image) are z-scored with ``mean``/``std`` (in
    [0, 1] units, one number or one per channel; default: the statistics of those pool images),
    like the classifier's inputs. Weight init and batch order come from ``seed`` without
    touching the global RNG state.
    """
    res = int(resolution or data.resolution)
    rows = pretrain_rows(data, seed, max_images, pretrain_class)
    dev = _resolve_device(device)
    chunk = max(1, int(batch_size))
    if mean is None or std is None:
        s1 = s2 = 0.0
        count = 0
        for i in range(0, rows.size, 256):
            x = _load_rows(data, rows[i : i + 256], res).double()
            s1 += float(x.sum())
            s2 += float((x * x).sum())
            count += x.numel()
        m = s1 / count
        mean = m if mean is None else mean
        std = float(max(s2 / count - m * m, 0.0) ** 0.5) + 1e-8 if std is None else std
    mean_t, std_t = _per_channel(mean, in_chans), _per_channel(std, in_chans)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvAutoencoder(in_chans=in_chans)
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=AE_LR)
    gen = torch.Generator().manual_seed(int(seed))
    history: list[float] = []
    for epoch in range(int(epochs)):
        perm = torch.randperm(rows.size, generator=gen).numpy()
        total, n = 0.0, 0
        for i in range(0, rows.size, chunk):
            batch = np.sort(rows[perm[i : i + chunk]])
            x = ((_load_rows(data, batch, res, in_chans) - mean_t) / std_t).to(dev)
            loss = F.mse_loss(model(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
            n += len(batch)
        history.append(total / n)
        log.info("autoencoder r%d seed %d: epoch %d/%d reconstruction MSE %.5f", res, seed, epoch + 1, epochs, history[-1])
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": history,
        "resolution": res,
        "seed": int(seed),
        "epochs": int(epochs),
        "n_images": int(rows.size),
        "rows_sha256": hashlib.sha256(rows.tobytes()).hexdigest(),
        "mean": mean_t.reshape(-1).tolist(),
        "std": std_t.reshape(-1).tolist(),
        "in_chans": int(in_chans),
        "pretrain_class": pretrain_class,
        "fingerprint": str(getattr(data, "fingerprint", "")),
    }


def ensure_autoencoder(
    data: Any,
    seed: int,
    *,
    epochs: int,
    device: Any = "cpu",
    resolution: Optional[int] = None,
    batch_size: int = 32,
    max_images: Optional[int] = None,
    mean: Optional[Any] = None,
    std: Optional[Any] = None,
    in_chans: int = 1,
    pretrain_class: Optional[str] = None,
) -> Path:
    """Return the cached autoencoder for (dataset, resolution, seed, epochs), training it once.

    The path is :func:`ae_cache_path`; pass it to ``create_model(..., ae_weights=path)``.
    Concurrent callers (threads or processes, also on other nodes sharing the directory)
    wait on a lock, and all but the first find the finished file.
    """
    res = int(resolution or data.resolution)
    _check_resolution(res)
    if int(epochs) < 1:
        raise ConfigError(f"train.ae_epochs must be >= 1, got {epochs}")
    if int(batch_size) < 1:
        raise ConfigError(f"ensure_autoencoder: batch_size must be >= 1, got {batch_size}")
    if max_images is not None and int(max_images) < 1:
        raise ConfigError(f"train.ae_pretrain_images must be >= 1 or null, got {max_images}")
    path = ae_cache_path(data, seed, epochs=epochs, resolution=res, max_images=max_images, mean=mean, std=std,
                         in_chans=in_chans, pretrain_class=pretrain_class)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock(str(path)), _file_lock(path.with_suffix(".lock")):
        if path.is_file():  # another trial finished it while we waited
            return path
        ckpt = pretrain_autoencoder(
            data,
            seed,
            epochs=epochs,
            device=device,
            resolution=res,
            batch_size=batch_size,
            max_images=max_images,
            mean=mean,
            std=std,
            in_chans=in_chans,
            pretrain_class=pretrain_class,
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    return path


def prepare_ae_encoder(data: Any, trial: Any, *, device: Any, mean: float, std: float) -> dict[str, Any]:
    """Pretrain the autoencoder on the unlabelled training pool (or find it cached): section 1's
    encoder is trained on reconstruction before the classifier sees any label."""
    tc = trial.train
    path = ensure_autoencoder(
        data,
        trial.seed,
        epochs=tc.ae_epochs,
        device=device,
        resolution=data.resolution,
        max_images=tc.ae_pretrain_images,
        mean=mean,
        std=std,
        in_chans=input_channels(trial.model),
        pretrain_class=tc.ae_pretrain_class,
    )
    return {"ae_weights": path}
