"""Optimizers, LR schedules, sampling, class weights and checkpoint plumbing (no training)."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch

from lungray.config import OptimizerConfig
from lungray.errors import ConfigError, LungrayError
from lungray.train import checkpoint as ckpt
from lungray.train.device import amp_dtype, epoch_seed, make_scaler, select_device
from lungray.train.loop import EpochSampler, class_weights, epoch_plan, sample_weights
from lungray.train.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    build_optimizer,
    build_scheduler,
    clip_gradients,
    lr_factor,
)


def _net() -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def test_registries_list_the_valid_choices():
    assert OPTIMIZERS.names() == ["adam", "adamw", "sgd"]
    assert SCHEDULERS.names() == ["cosine", "inverse_time", "none", "step"]
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adagrad'; valid choices: adam, adamw, sgd"):
        OPTIMIZERS.get("adagrad")
    with pytest.raises(ConfigError, match=r"unknown scheduler 'plateau'; valid choices: cosine, inverse_time, none, step"):
        build_scheduler(torch.optim.SGD(_net().parameters(), lr=0.1), OptimizerConfig(scheduler="plateau"), 5)


def test_only_trainable_parameters_reach_the_optimizer():
    net = _net()
    for p in net[0].parameters():
        p.requires_grad_(False)
    opt = build_optimizer(net, OptimizerConfig(name="sgd", lr=0.01, weight_decay=0.01))
    assert isinstance(opt, torch.optim.SGD)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in net[2].parameters()}
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.01, 0.9, 0.01)  # RSNA study recipe
    adam = build_optimizer(net, OptimizerConfig(name="adam", lr=3e-4))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["lr"] == 3e-4
    adamw = build_optimizer(net, OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.05))
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.05
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(net, OptimizerConfig())


def test_lr_factor_exact_values():
    step = OptimizerConfig(scheduler="step", step_size=10, gamma=0.1)
    assert [lr_factor(e, step, 30) for e in (0, 9, 10, 19)] == [1.0, 1.0, 0.1, 0.1]
    assert lr_factor(25, step, 30) == pytest.approx(0.01, rel=1e-12)
    assert lr_factor(7, OptimizerConfig(), 10) == 1.0
    cos = OptimizerConfig(scheduler="cosine", warmup_epochs=2)
    # warm-up 1/3, 2/3, then the half cosine over the remaining 8 epochs
    assert lr_factor(0, cos, 10) == pytest.approx(1 / 3)
    assert lr_factor(1, cos, 10) == pytest.approx(2 / 3)
    assert lr_factor(2, cos, 10) == 1.0
    assert lr_factor(6, cos, 10) == pytest.approx(0.5)
    assert lr_factor(9, cos, 10) == pytest.approx(0.5 * (1 + math.cos(7 * math.pi / 8)))
    assert lr_factor(5, OptimizerConfig(scheduler="cosine"), 10) == pytest.approx(0.5)
    # warm-up composes with the step schedule too
    assert lr_factor(0, OptimizerConfig(scheduler="step", warmup_epochs=1), 20) == 0.5


def test_step_scheduler_matches_torch_steplr_and_resumes_from_weights_only_state():
    cfg = OptimizerConfig(name="sgd", lr=0.1, scheduler="step", step_size=10, gamma=0.1)
    opt = build_optimizer(_net(), cfg)
    sch = build_scheduler(opt, cfg, 30)
    ref_opt = torch.optim.SGD(_net().parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=10, gamma=0.1)
    ours, theirs = [], []
    for _ in range(25):
        ours.append(opt.param_groups[0]["lr"])
        theirs.append(ref_opt.param_groups[0]["lr"])
        opt.step()  # no gradients: a no-op that keeps the optimizer-before-scheduler order
        ref_opt.step()
        sch.step()
        ref.step()
    assert ours == pytest.approx(theirs, rel=1e-12)

    buf = io.BytesIO()
    torch.save({"s": sch.state_dict(), "o": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer(_net(), cfg)
    sch2 = build_scheduler(opt2, cfg, 30)
    opt2.load_state_dict(state["o"])
    sch2.load_state_dict(state["s"])
    for _ in range(5):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        opt.step()
        opt2.step()
        sch.step()
        sch2.step()


def test_clip_gradients_caps_the_global_norm():
    net = torch.nn.Linear(2, 1, bias=False)
    net.weight.grad = torch.tensor([[3.0, 4.0]])
    assert clip_gradients(net.parameters(), 1.0) == pytest.approx(5.0)
    assert torch.linalg.vector_norm(net.weight.grad).item() == pytest.approx(1.0)
    assert clip_gradients(net.parameters(), None) is None


def test_class_and_sample_weights_hand_cases():
    assert class_weights(np.array([0, 0, 0, 1]), 2).tolist() == [4 / 6, 2.0]
    # absent class gets weight 0 instead of infinity
    assert class_weights(np.array([0, 0, 2, 2, 2, 2]), 3).tolist() == [1.0, 0.0, 0.5]
    w = sample_weights(np.array([1, 0, 0, 0]), 2)
    assert w.tolist() == [1.0, 1 / 3, 1 / 3, 1 / 3]
    assert w[[1, 2, 3]].sum() == pytest.approx(w[0])  # each class carries the same total weight


def test_epoch_plan_steps_and_drop_last():
    assert epoch_plan(100, 4) == (25, False)
    assert epoch_plan(10, 16) == (1, False)  # one short batch
    assert epoch_plan(17, 16) == (1, True)  # a last batch of 1 is dropped (batch norm)
    assert epoch_plan(33, 16, world_size=2) == (1, True)  # 17 per rank
    assert epoch_plan(1, 4) == (1, False)
    with pytest.raises(ConfigError, match="zero optimisation steps"):
        epoch_plan(10, 0)


def test_epoch_sampler_is_a_function_of_seed_and_epoch_and_shards_disjointly():
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(2)
    e2 = list(s)
    s.set_epoch(1)
    assert list(s) == e1 and sorted(e1) == list(range(10)) and e1 != e2
    assert list(EpochSampler(10, seed=4)) != list(EpochSampler(10, seed=3))
    # two ranks: disjoint halves of the same permutation (padded by wrapping for odd n)
    r0, r1 = EpochSampler(9, 3, rank=0, world_size=2), EpochSampler(9, 3, rank=1, world_size=2)
    full = EpochSampler(9, 3)
    a, b, f = list(r0), list(r1), list(full)
    assert len(a) == len(b) == 5 == len(r0)
    assert a == (f + f[:1])[0::2] and b == (f + f[:1])[1::2]
    # weighted: with replacement, the rare class drawn about as often as the common one
    y = np.array([0] * 90 + [1] * 10)
    ws = EpochSampler(100, 0, weights=sample_weights(y, 2))
    draws = []
    for e in range(20):
        ws.set_epoch(e)
        draws += list(ws)
    frac1 = np.mean(y[draws] == 1)
    assert 0.4 < frac1 < 0.6
    assert epoch_seed(1, 2) != epoch_seed(1, 3) and epoch_seed(1, 2) == epoch_seed(1, 2)


def test_rng_state_roundtrip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    d = ckpt.save_state(tmp_path / "checkpoints" / "epoch_0001", {"epoch": 1, "rng": ckpt.rng_state()})
    first = (random.random(), np.random.rand(), torch.rand(3).tolist())
    state = ckpt.load_state(d)  # weights_only=True inside
    assert state["epoch"] == 1 and state["format"] == ckpt.FORMAT_VERSION
    ckpt.set_rng_state(state["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3).tolist())
    assert again == first
    # rewriting replaces the directory atomically and leaves no temporary directories behind
    ckpt.save_state(d, {"epoch": 2})
    assert ckpt.load_state(d)["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0001"]
    ckpt.save_state(tmp_path / "checkpoints" / "epoch_0003", {"epoch": 3})
    ckpt.remove_older(tmp_path / "checkpoints", keep=tmp_path / "checkpoints" / "epoch_0003")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0003"]
    with pytest.raises(LungrayError, match="no state.pt"):
        ckpt.load_state(tmp_path / "nowhere")


def test_device_and_amp_selection_on_cpu():
    cpu = select_device("cpu")
    assert cpu.type == "cpu"
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, "fp16") is None  # AMP off on CPU
    assert make_scaler(cpu, None).is_enabled() is False
    with pytest.raises(ConfigError, match="valid choices: auto, bf16, fp16, off"):
        amp_dtype(cpu, "fp8")
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="no GPU is visible"):
            select_device("cuda")
