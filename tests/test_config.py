"""The study config: presets, YAML + overrides, unknown keys, validation at config time."""

from __future__ import annotations

import pytest

from lungray.config import (
    ScheduleConfig,
    SizeRule,
    StudyConfig,
    TrialConfig,
    apply_overrides,
    dump_yaml,
    from_dict,
)
from lungray.errors import ConfigError
from lungray.study import load_study
from lungray.presets import PAPER_SIZE_RULES, preset_names


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates(name):
    cfg = load_study(name, overrides=[] if name in ("smoke", "default") else ["data.path=/data/x"])
    assert isinstance(cfg, StudyConfig)
    grid = len(cfg.models) * len(cfg.variants) * len(cfg.sizes) * len(cfg.optimizers) * len(cfg.seeds)
    assert len(cfg.study_trials()) == grid
    assert len(cfg.trials()) == grid * (2 if cfg.probes.source else 1)  # each with its source probe (issue 24.2)


def test_paper_preset_is_the_protocol():
    cfg = load_study("paper", overrides=["data.path=/data/covid"])
    assert [m.name for m in cfg.models] == ["resnet50", "densenet121", "ae_encoder"]
    assert cfg.sizes == (100, 200, 500, 1000)
    assert cfg.data.resolution == 256 and cfg.data.eval_size == 3000
    assert cfg.train.augmentation == "rot30_zoom_flip"
    # batch 4 x 200 epochs at 100-200 images, batch 16 x 100 epochs at 500-1000 (PROTOCOLS.md s1)
    assert [cfg.schedule.resolve(n) for n in cfg.sizes] == [(4, 200), (4, 200), (16, 100), (16, 100)]


def test_yaml_then_overrides(tmp_path):
    y = tmp_path / "study.yaml"
    y.write_text("seeds: [5, 6]\nmodels: [simple_cnn, logreg]\ndata:\n  resolution: 48\n")
    cfg = load_study("smoke", y, ["data.resolution=40", "optimizers.0.lr=0.01", "models.1.head=linear"])
    assert cfg.seeds == (5, 6)
    assert cfg.optimizers[0].lr == 0.01
    assert [m.name for m in cfg.models] == ["simple_cnn", "logreg"]
    assert cfg.data.resolution == 40  # the override wins over the YAML


def test_override_values_are_parsed_as_yaml():
    d = apply_overrides({"a": {"b": 1}}, ["a.b=3", "a.c=[1, 2]", "a.d=true", "e=null"])
    assert d == {"a": {"b": 3, "c": [1, 2], "d": True}, "e": None}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])


def test_list_entries_are_set_by_index_and_mistakes_show_the_form_that_works():
    """Issue 13 item 10: each error names the override and spells the right one."""
    d = {"optimizers": [{"name": "adam", "lr": 1e-3}], "models": ["resnet18", {"name": "logreg"}], "seeds": [0], "data": {"resolution": 32}}
    out = apply_overrides(d, ["optimizers[0].lr=0.01", "models.0.freeze=backbone", "models[1].label=lr"])
    assert out["optimizers"] == [{"name": "adam", "lr": 0.01}]
    assert out["models"] == [{"name": "resnet18", "freeze": "backbone"}, {"name": "logreg", "label": "lr"}]
    cases = {
        "optimizers.lr=0.01": "override 'optimizers.lr=0.01': optimizers is a list (1 entry); set an entry by its index: "
                              "optimizers[0].lr=0.01",
        "models.freeze=backbone": "override 'models.freeze=backbone': models is a list (2 entries); set an entry by its "
                                  "index: models[0].freeze=backbone or models[1].freeze=backbone",
        "models[2].width=4": "override 'models[2].width=4': index 2 is out of range: models has 2 entries (0..1)",
        "seeds=0,1,2": "override 'seeds=0,1,2': seeds takes a list, written in brackets: seeds=[0,1,2]",
        "data.resolution.x=1": "override 'data.resolution.x=1': 'data.resolution' is a value, not a section",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as e:
            apply_overrides(d, [override])
        assert str(e.value) == message
    assert apply_overrides(d, ["seeds=[0,1,2]"])["seeds"] == [0, 1, 2]


def test_unknown_keys_are_rejected_with_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_study("smoke", overrides=["data.resolutoin=32"])
    assert "data.resolutoin" in str(e.value) and "resolution" in str(e.value)
    with pytest.raises(ConfigError, match="unknown config key epochz"):
        from_dict(ScheduleConfig, {"epochz": 3})


@pytest.mark.parametrize(
    "override, needle",
    [
        ("models=[resnet5O]", "resnet5O"),
        ("optimizers=[adamm]", "adam, adamw, sgd"),
        ("optimizers.0.lr=0", "lr must be > 0"),
        ("schedule.epochs=0", "zero optimisation steps"),
        ("data.resize=crop", "letterbox"),
        ("train.augmentation=spin", "rot30_zoom_flip"),
        ("sizes=[10, 10]", "duplicates"),
        ("data.source=kaggle", "covid_radiography"),
    ],
)
def test_malformed_configs_fail_at_config_time(override, needle):
    with pytest.raises(ConfigError) as e:
        load_study("smoke", overrides=[override])
    assert needle in str(e.value)


def test_bad_freeze_policy_lists_choices():
    with pytest.raises(ConfigError) as e:
        load_study("smoke", overrides=["models=[{name: resnet18, freeze: thaw}]"])
    msg = str(e.value)
    assert "thaw" in msg and "backbone" in msg and "none" in msg


def test_types_are_checked():
    with pytest.raises(ConfigError, match="expected an integer"):
        load_study("smoke", overrides=["data.resolution=big"])
    with pytest.raises(ConfigError, match="true/false"):
        load_study("smoke", overrides=["data.strict=maybe"])


def test_size_rules_and_step_budget():
    s = ScheduleConfig(rule="size", size_rules=tuple(SizeRule(**r) for r in PAPER_SIZE_RULES))
    assert s.resolve(1) == (4, 200) and s.resolve(201) == (16, 100)
    steps = ScheduleConfig(rule="steps", batch_size=16, max_steps=100)
    # 50 images at batch 16 -> 4 steps/epoch -> 25 epochs; 400 images -> 25 steps/epoch -> 4 epochs
    assert steps.resolve(50) == (16, 25)
    assert steps.resolve(400) == (16, 4)
    assert steps.resolve(8) == (8, 100)  # batch never exceeds the subset


def test_grid_order_and_trial_roundtrip():
    cfg = load_study("smoke")
    trials = cfg.trials()
    assert [(t.model.key, t.train_size, t.seed) for t in trials[:3]] == [
        ("simple_cnn", 40, 0),
        ("simple_cnn", 40, 1),
        ("simple_cnn", 120, 0),
    ]
    t = trials[0]
    assert TrialConfig.from_dict(t.to_dict()) == t
    assert t.name == "simple_cnn|n=40|adam|seed=0"


def test_fingerprint_tracks_the_grid_not_the_plumbing():
    a = load_study("smoke")
    b = load_study("smoke", overrides=["output_dir=elsewhere", "resources.max_failures=5"])
    c = load_study("smoke", overrides=["seeds=[0, 1, 2]"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_real_dataset_presets_need_a_path():
    with pytest.raises(ConfigError, match="--data PATH"):
        load_study("paper")


def test_dump_yaml_roundtrips(tmp_path):
    cfg = load_study("paper", overrides=["data.path=/data/covid"])
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_study("smoke", p) == cfg


def test_ae_encoder_resolution_checked_at_config_time():
    with pytest.raises(ConfigError, match="ae_encoder needs data.resolution"):
        load_study("smoke", overrides=["models=[ae_encoder]", "data.resolution=64"])
