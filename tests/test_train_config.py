"""Malformed trial configs fail at config time, with the valid choices in the message.

``load_study`` validates through :func:`lungray.train.validate.validate_study` (through :func:`lungray.study.load_study`), which imports every
registry (data, models, optimizers), so these tests run once all areas exist. ``run_trial``
re-validates a hand-built trial before it touches the data (``data=None`` here proves it).
"""

from __future__ import annotations

import pytest

from lungray.config import ModelConfig, OptimizerConfig, ScheduleConfig, SizeRule, TrialConfig
from lungray.study import load_study
from lungray.errors import ConfigError
from lungray.presets import PAPER_SIZE_RULES


def _load(*overrides: str):
    return load_study("smoke", overrides=list(overrides))


def test_smoke_preset_is_valid():
    cfg = _load()
    assert cfg.optimizers[0].name == "adam"


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("optimizers=[adagrad]", r"unknown optimizer 'adagrad'; valid choices: adam, adamw, sgd"),
        ("optimizers=[{name: sgd, scheduler: plateau}]", r"unknown scheduler 'plateau'; valid choices: cosine, inverse_time, none, step"),
        ("optimizers=[{name: adam, lr: 0}]", r"optimizers\[0\]\.lr must be > 0, got 0"),
        ("optimizers=[{name: adam, lr: -0.001}]", r"optimizers\[0\]\.lr must be > 0"),
        ("schedule.epochs=0", r"zero optimisation steps"),
        ("schedule.batch_size=0", r"batch_size must be >= 1.*zero optimisation steps"),
        ("schedule={rule: steps, batch_size: 0, max_steps: 10}", r"batch_size must be >= 1"),
        ("schedule={rule: steps, batch_size: 8, max_steps: 0}", r"max_steps > 0"),
        ("schedule={rule: size, size_rules: [{max_size: 1000, batch_size: 4, epochs: 0}]}", r"zero optimisation steps"),
        ("schedule.monitor=val_f1", r"valid choices: val_loss, val_accuracy, val_balanced_accuracy, val_macro_f1, val_auc"),
        ("schedule.early_stopping_patience=0", r"early_stopping_patience must be >= 1"),
        ("train.imbalance=oversample", r"valid choices: none, weighted_loss, weighted_sampler"),
        ("train.amp=fp8", r"valid choices: auto, bf16, fp16, off"),
        ("train.label_smoothing=1.5", r"label_smoothing must be in \[0, 1\)"),
        ("train.eval_batch_size=0", r"eval_batch_size must be >= 1"),
    ],
)
def test_malformed_training_configs_fail_at_config_time(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        _load(override)


def test_unknown_model_and_freeze_policy_list_the_choices():
    with pytest.raises(ConfigError, match=r"unknown model 'not_a_model_xyz'.*ae_encoder, logreg, simple_cnn"):
        _load("models=[not_a_model_xyz]")
    with pytest.raises(ConfigError, match=r"unknown model 'resnet5O'; close matches: resnet50"):
        _load("models=[resnet5O]")
    with pytest.raises(ConfigError, match=r"unknown freeze policy 'halfway'.*valid choices: .*backbone.*none"):
        _load("models=[{name: simple_cnn, freeze: halfway}]")


def test_paper_size_rule_gives_the_study_budget_exactly():
    """PROTOCOLS.md section 1: batch 4 x 200 epochs at 100/200 images, 16 x 100 at 500/1000."""
    s = ScheduleConfig(rule="size", size_rules=tuple(SizeRule(**r) for r in PAPER_SIZE_RULES))
    assert [s.resolve(n) for n in (100, 200, 201, 500, 1000)] == [(4, 200), (4, 200), (16, 100), (16, 100), (16, 100)]
    steps = ScheduleConfig(rule="steps", batch_size=16, max_steps=120)
    # 50 -> 4 steps/epoch -> 30 epochs; 150 -> 10 -> 12; 450 -> 29 -> ceil(120/29) = 5; 10 -> batch 10
    assert [steps.resolve(n) for n in (50, 150, 450, 10)] == [(16, 30), (16, 12), (16, 5), (10, 120)]
    assert ScheduleConfig(rule="fixed", batch_size=32, epochs=25).resolve(8000) == (32, 25)


def test_run_trial_validates_before_touching_data(tmp_path):
    from lungray.train import run_trial

    bad = [
        (OptimizerConfig(name="adagrad"), ScheduleConfig(), "valid choices: adam, adamw, sgd"),
        (OptimizerConfig(lr=0.0), ScheduleConfig(), r"lr must be > 0"),
        (OptimizerConfig(), ScheduleConfig(epochs=0), "zero optimisation steps"),
    ]
    for opt, sched, pattern in bad:
        trial = TrialConfig(study="t", model=ModelConfig(), train_size=10, optimizer=opt, seed=0, schedule=sched)
        with pytest.raises(ConfigError, match=pattern):
            run_trial(trial, None, workdir=tmp_path)  # data=None: never reached
    assert not any(tmp_path.iterdir())
