"""The training-size study's autoencoder (PROTOCOLS.md section 1): sizes, pretraining, cache, locks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from lungray.config import ModelConfig
from lungray.data.prepared import PreparedData
from lungray.errors import ConfigError
from lungray.models import create_model, ensure_autoencoder
from lungray.models import autoencoder as ae_mod


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_layer_sizes_are_the_protocol_table_at_256px():
    ae = ae_mod.ConvAutoencoder(in_chans=3)  # the study's 256x256x3 input
    enc = [_count(m) for m in ae.encoder if isinstance(m, torch.nn.Conv2d)]
    dec = [_count(m) for m in ae.decoder if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert enc == [448, 2320, 1160, 584, 584, 219]
    assert dec == [84, 224, 584, 584, 1168, 2320, 435]
    assert _count(ae) == 10_714
    with torch.no_grad():
        x = torch.zeros(1, 3, 256, 256)
        code = ae.encoder(x)
        assert code.shape == (1, 3, 64, 64)  # the "CODE" layer, 64x64x3
        assert ae.decoder(code).shape == (1, 3, 256, 256)
    # any resolution divisible by 4: code = res/4 x res/4 x 3
    gray = ae_mod.ConvAutoencoder(in_chans=1)
    assert gray.encoder(torch.zeros(2, 1, 40, 40)).shape == (2, 3, 10, 10)
    assert gray(torch.zeros(2, 1, 40, 40)).shape == (2, 1, 40, 40)


def test_ae_encoder_feeds_densenet121_with_the_code():
    model = create_model(ModelConfig(name="ae_encoder", head="bn_mlp256"), 2, resolution=128)
    body = model.backbone.body
    assert type(body.densenet).__name__ == "DenseNet" and body.densenet.features.conv0.in_channels == 3
    with torch.no_grad():
        assert body.encoder(torch.zeros(1, 1, 128, 128)).shape == (1, 3, 32, 32)
    assert model.feature_shape == (1024, 1, 1)


class GuardedImages:
    """An images array that fails on any read of a forbidden (evaluation/validation) row."""

    def __init__(self, arr, forbidden):
        self.arr = arr
        self.forbidden = set(int(i) for i in forbidden)
        self.seen: set[int] = set()

    shape = property(lambda self: self.arr.shape)
    dtype = property(lambda self: self.arr.dtype)
    ndim = property(lambda self: self.arr.ndim)

    def __len__(self):
        return len(self.arr)

    def __getitem__(self, idx):
        rows = np.atleast_1d(np.arange(len(self.arr))[idx]).tolist()
        bad = self.forbidden.intersection(rows)
        if bad:
            raise AssertionError(f"read evaluation/validation rows {sorted(bad)[:5]}")
        self.seen.update(rows)
        return self.arr[idx]


def _prepared(tmp_path, n=48, res=16):
    """A tiny PreparedData on disk: smooth random images; rows 0-11 eval, 12-15 val, 16-47 pool."""
    root = tmp_path / "prepared"
    root.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:res, 0:res] / res
    imgs = np.stack(
        [(127 + 100 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy))) for _ in range(n)]
    ).astype(np.uint8)
    np.save(root / "images.npy", imgs)
    np.save(root / "labels.npy", np.arange(n) % 2)
    (root / "meta.json").write_text(json.dumps({"class_names": ["Normal", "COVID"]}))
    data = PreparedData(
        root=str(root),
        class_names=("Normal", "COVID"),
        eval_idx=np.arange(0, 12),
        val_idx=np.arange(12, 16),
        pool_idx=np.arange(16, n),
        fingerprint="test-fp",
    )
    guard = GuardedImages(imgs, forbidden=np.arange(0, 16))
    data.__dict__["images"] = guard  # the cached_property slot: every read goes through the guard
    return data, guard


@pytest.fixture
def counting(monkeypatch):
    calls = []
    real = ae_mod.pretrain_autoencoder

    def wrapper(*a, **kw):
        calls.append(kw.get("epochs"))
        return real(*a, **kw)

    monkeypatch.setattr(ae_mod, "pretrain_autoencoder", wrapper)
    return calls


def test_pretrains_on_the_pool_only_caches_and_reuses(tmp_path, counting):
    data, guard = _prepared(tmp_path)
    path = ensure_autoencoder(data, 0, epochs=4, resolution=16, batch_size=8)
    assert path == tmp_path / "prepared" / "ae" / "ae-r16-s0-e4.pt"
    assert counting == [4]
    assert guard.seen == set(range(16, 48))  # every pool row, nothing else
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["n_images"] == 32 and ckpt["resolution"] == 16 and ckpt["seed"] == 0
    assert len(ckpt["history"]) == 4 and ckpt["history"][-1] < ckpt["history"][0]  # reconstruction improves
    assert not list(path.parent.glob("*.tmp"))  # written atomically

    mtime = path.stat().st_mtime_ns
    again = ensure_autoencoder(data, 0, epochs=4, resolution=16, batch_size=8)
    assert again == path and counting == [4] and path.stat().st_mtime_ns == mtime  # reused, not retrained

    other = ensure_autoencoder(data, 1, epochs=4, resolution=16, batch_size=8)
    assert other.name == "ae-r16-s1-e4.pt" and counting == [4, 4]


def test_same_seed_gives_the_same_weights_and_max_images_subsamples_the_pool(tmp_path):
    data, guard = _prepared(tmp_path)
    a = ae_mod.pretrain_autoencoder(data, 3, epochs=1, resolution=16, batch_size=8)
    b = ae_mod.pretrain_autoencoder(data, 3, epochs=1, resolution=16, batch_size=8)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    guard.seen.clear()
    p = ensure_autoencoder(data, 3, epochs=1, resolution=16, batch_size=8, max_images=10)
    assert p.name == "ae-r16-s3-e1-n10.pt"
    assert len(guard.seen) == 10 and guard.seen <= set(range(16, 48))


def test_encoder_weights_load_into_ae_encoder(tmp_path):
    data, _ = _prepared(tmp_path)
    path = ensure_autoencoder(data, 0, epochs=1, resolution=16, batch_size=16)
    model = create_model(ModelConfig(name="ae_encoder"), 2, resolution=128, ae_weights=path)
    saved = torch.load(path, weights_only=True)["model"]
    enc = model.backbone.body.encoder.state_dict()
    assert set(enc) == {k[len("encoder.") :] for k in saved if k.startswith("encoder.")}
    for k, v in enc.items():
        assert torch.equal(v, saved[f"encoder.{k}"]), k
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"encoder.conv1.weight": torch.zeros(16, 3, 3, 3)}}, bad)
    with pytest.raises(ConfigError, match=r"autoencoder file .*bad.pt does not fit this encoder"):
        create_model(ModelConfig(name="ae_encoder"), 2, resolution=128, ae_weights=bad)


def test_concurrent_threads_train_once(tmp_path, counting):
    data, _ = _prepared(tmp_path)
    barrier = threading.Barrier(3)
    out = []

    def call():
        barrier.wait()
        out.append(ensure_autoencoder(data, 5, epochs=1, resolution=16, batch_size=16))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert counting == [1] and len(out) == 3 and len(set(out)) == 1 and out[0].is_file()


HOLD_LOCK = """
import fcntl, os, sys, time
lock, ready, go, cache = sys.argv[1:5]
fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.05)
open(cache, "wb").write(b"finished by the other process")
fcntl.lockf(fd, fcntl.LOCK_UN)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")
def test_another_process_holding_the_lock_is_waited_for(tmp_path, counting):
    data, _ = _prepared(tmp_path)
    path = ae_mod.ae_cache_path(data, 7, epochs=1, resolution=16)
    path.parent.mkdir(parents=True)
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path.with_suffix(".lock")), str(ready), str(go), str(path)])
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert ready.exists(), "the helper process did not take the lock"
        out = []
        t = threading.Thread(target=lambda: out.append(ensure_autoencoder(data, 7, epochs=1, resolution=16)))
        t.start()
        t.join(1.0)  # while the other process holds the lock, this call must not train
        assert counting == []
        go.touch()
        t.join(60)
        assert not t.is_alive() and out == [path]
        assert counting == []  # the other process's file was reused
        assert path.read_bytes() == b"finished by the other process"
    finally:
        go.touch()
        proc.wait(30)
    assert proc.returncode == 0


def test_bad_arguments(tmp_path):
    data, _ = _prepared(tmp_path)
    with pytest.raises(ConfigError, match="divisible by 4"):
        ensure_autoencoder(data, 0, epochs=1, resolution=18)
    with pytest.raises(ConfigError, match="ae_epochs must be >= 1"):
        ensure_autoencoder(data, 0, epochs=0)
    assert not (tmp_path / "prepared" / "ae").exists()
