"""Grid expansion, the resource preflight, dry-run output, resume checks, progress helpers.

Pure functions only: no Ray, no MLflow, no training (a few seconds in all).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lungray.config import dump_yaml
from lungray.study import load_study, validate_study
from lungray.errors import ConfigError
from lungray.sweep import grid as G
from lungray.sweep.cluster import local_cluster_spec
from lungray.sweep.progress import eta_by_cell, format_seconds, summary_table, trial_line
from lungray.sweep.resume import check_resume, grid_diff

REPO = Path(__file__).resolve().parents[1]


def smoke(*overrides: str):
    return load_study("smoke", overrides=list(overrides), validate=False)


def cpu_cluster(cpus: float, gpus: float = 0.0, nodes: int = 1) -> G.ClusterSpec:
    return G.ClusterSpec(nodes=(G.NodeSpec("n", cpus, gpus, count=nodes),))


# -------------------------------------------------------------------------------- grid


def test_grid_expands_model_size_optimizer_seed_in_order():
    cfg = smoke("sizes=[40,120]", "seeds=[0,1,2]", "optimizers=[{name: adam, lr: 0.01}, {name: sgd, lr: 0.1}]")
    trials = cfg.trials()
    assert len(trials) == 2 * 2 * 2 * 3 == G.n_trials(cfg)
    assert [t.name for t in trials[:4]] == [
        "simple_cnn|n=40|adam|seed=0",
        "simple_cnn|n=40|adam|seed=1",
        "simple_cnn|n=40|adam|seed=2",
        "simple_cnn|n=40|sgd|seed=0",
    ]
    assert trials[-1].name == "logreg|n=120|sgd|seed=2"
    axes = G.param_space_axes(cfg)
    assert axes == {"model": ["simple_cnn", "logreg"], "train_size": [40, 120], "optimizer": ["adam", "sgd"], "seed": [0, 1, 2]}


def test_trial_from_params_looks_up_the_cell_and_applies_a_sampled_lr():
    cfg = smoke()
    lookup = G.trial_lookup(cfg)
    t = G.trial_from_params(lookup, {"model": "logreg", "train_size": 120, "optimizer": "adam", "seed": 1})
    assert (t.model.name, t.train_size, t.optimizer.name, t.seed, t.optimizer.lr) == ("logreg", 120, "adam", 1, 3e-3)
    t2 = G.trial_from_params(lookup, {"model": "logreg", "train_size": 120, "optimizer": "adam", "seed": 1, "lr": 0.05})
    assert t2.optimizer.lr == 0.05 and t2.optimizer.key == "adam"  # same cell label
    with pytest.raises(ConfigError, match="not part of this study's grid"):
        G.trial_from_params(lookup, {"model": "resnet50", "train_size": 120, "optimizer": "adam", "seed": 1})


def test_trial_uid_is_stable_safe_and_unique():
    cfg = load_study("transfer", validate=False)
    uids = [G.trial_uid(t) for t in cfg.trials()]
    assert len(set(uids)) == len(uids)
    assert all(set(u) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") for u in uids)
    assert uids == [G.trial_uid(t) for t in load_study("transfer", validate=False).trials()]
    t = cfg.trials()[0]
    assert G.trial_uid(t, lr_sampled=True) != G.trial_uid(t)
    assert uids[0].startswith("vgg16-backbone-n500-adam-s0-") and len(uids[0]) == len("vgg16-backbone-n500-adam-s0-") + 6
    assert sum(u.startswith("resnet50-layer3-4-fc-n500-adam-s0-") for u in uids) == 1  # label "resnet50[layer3+4+fc]"


def test_lr_search_is_off_by_default_and_validated():
    assert G.lr_search_spec(smoke()) is None
    cfg = smoke("lr_search={samples: 3, low: 0.0001, high: 0.01}")
    spec = G.lr_search_spec(cfg)
    assert (spec.samples, spec.low, spec.high, spec.asha) == (3, 1e-4, 1e-2, False)
    assert G.n_trials(cfg) == 8 * 3
    with pytest.raises(ConfigError, match="lr_search.sample"):
        G.lr_search_spec(smoke("lr_search={sample: 3}"))
    with pytest.raises(ConfigError, match="0 < low < high"):
        G.lr_search_spec(smoke("lr_search={low: 0.1, high: 0.01}"))


# -------------------------------------------------------------------------------- preflight


def test_preflight_two_cpu_machine_runs_two_trials_at_once():
    # through Ray Train: 0.01 (trial) + 0.99 (worker) = 1 CPU per trial -> 2 at once on 2 CPUs (issue 6)
    pre = G.preflight(smoke("resources.use_ray_train=true"), cpu_cluster(2))
    assert pre.capacity == 2 and pre.max_concurrent_trials == 2
    assert pre.resources.ray_train
    assert pre.resources.worker_bundle == {"CPU": 0.99, "GPU": 0.0}
    assert pre.resources.trial_bundle == {"cpu": 0.01}
    assert pre.resources.total == {"CPU": 1.0, "GPU": 0.0}
    # one-worker trials by default ("auto"): the Tune trial trains and holds the worker's share
    pre = G.preflight(smoke(), cpu_cluster(2))
    assert pre.capacity == 2 and not pre.resources.ray_train
    assert pre.resources.trial_bundle == {"cpu": 0.99, "gpu": 0.0}
    assert pre.resources.total == {"CPU": 0.99, "GPU": 0.0}


def test_use_ray_train_auto_means_ray_train_only_for_ddp():
    assert smoke().resources.use_ray_train == "auto" and not smoke().resources.ray_train
    assert smoke("resources.workers=2").resources.ray_train
    assert smoke("resources.use_ray_train=true").resources.ray_train
    assert not smoke("resources.use_ray_train=false").resources.ray_train
    with pytest.raises(ConfigError, match="resources.use_ray_train=false runs each trial in one process but resources.workers=2"):
        validate_study(smoke("resources.use_ray_train=false", "resources.workers=2"))
    with pytest.raises(ConfigError, match="resources.use_ray_train"):
        validate_study(smoke("resources.use_ray_train=sometimes"))


def test_preflight_caps_concurrency_at_the_number_of_trials():
    cfg = smoke("models=[logreg]", "sizes=[40]", "seeds=[0,1,2]")
    assert G.preflight(cfg, cpu_cluster(64)).max_concurrent_trials == 3


def test_preflight_refuses_gpu_trials_on_a_gpu_less_cluster_with_the_reason():
    cfg = smoke("resources.gpus_per_worker=1")
    with pytest.raises(ConfigError) as e:
        G.preflight(cfg, cpu_cluster(16))
    msg = str(e.value)
    assert "resources.gpus_per_worker=1" in msg and "no GPU" in msg and "16 CPU" in msg
    assert "\n" not in msg


def test_preflight_refuses_a_worker_bigger_than_any_node():
    cfg = smoke("resources.cpus_per_worker=8")
    with pytest.raises(ConfigError, match="one Train worker needs 8 CPU on a single node but the largest node has 4 CPU"):
        G.preflight(cfg, cpu_cluster(4, nodes=3))
    cfg = smoke("resources.gpus_per_worker=2", "resources.cpus_per_worker=1")
    with pytest.raises(ConfigError, match="needs 1 CPU \\+ 2 GPU"):
        G.preflight(cfg, cpu_cluster(8, gpus=1, nodes=4))


def test_preflight_refuses_more_workers_than_the_cluster_holds():
    cfg = smoke("resources.workers=3", "resources.cpus_per_worker=2")
    with pytest.raises(ConfigError, match="resources.workers=3.*fits only 2"):
        G.preflight(cfg, cpu_cluster(4))


def test_fractional_gpus_pack_within_a_gpu():
    cfg_sets = ("resources.gpus_per_worker=0.25", "resources.cpus_per_worker=1", "seeds=[0,1,2,3,4,5,6,7,8,9]")
    cfg = smoke(*cfg_sets)
    pre = G.preflight(cfg, G.ClusterSpec(nodes=(G.NodeSpec("g", cpu=32, gpu=2),)))
    assert pre.capacity == 8  # 2 GPUs x 4 quarter-GPU workers; CPU would allow 31
    pre = G.preflight(cfg, G.ClusterSpec(nodes=(G.NodeSpec("g", cpu=3, gpu=2),)))
    assert pre.capacity == 3  # now CPU-bound: 3 CPU / 1 per trial (trained in the Tune trial)
    assert pre.resources.trial_bundle == {"cpu": 1.0, "gpu": 0.25}
    pre = G.preflight(smoke(*cfg_sets, "resources.use_ray_train=true"), G.ClusterSpec(nodes=(G.NodeSpec("g", cpu=3, gpu=2),)))
    assert pre.capacity == 2  # through Ray Train: 3 CPU / (1 + 0.01) per trial


def test_ddp_trials_need_all_workers_and_autoscaled_types_count():
    cluster_yaml = REPO / "cluster.yaml"
    import yaml

    head = G.ClusterSpec(nodes=(G.NodeSpec("head", cpu=8, gpu=0),), source="Ray cluster")
    spec = head.with_autoscaling(yaml.safe_load(cluster_yaml.read_text()))
    names = {n.name: n for n in spec.nodes}
    assert names["gpu_1x"].autoscaled and names["gpu_1x"].count == 4 and names["gpu_1x"].gpu == 1
    assert names["gpu_4x_ddp"].count == 2 and names["gpu_4x_ddp"].gpu == 4
    cfg = smoke("resources.workers=4", "resources.gpus_per_worker=1", "resources.cpus_per_worker=4", "seeds=[0,1,2,3,4,5]")
    pre = G.preflight(cfg, spec)
    # GPU slots: 4 x 1 (g5.xlarge) + 2 x 4 (g5.12xlarge) = 12 -> 3 four-worker trials
    assert pre.capacity == 3 and pre.max_concurrent_trials == 3
    assert any("autoscaled" in n for n in pre.notes)
    assert "gpu_1x: up to 4 x 4 CPU, 1 GPU" in spec.describe()


def test_configured_concurrency_above_capacity_is_kept_with_a_note():
    pre = G.preflight(smoke("resources.max_concurrent_trials=5"), cpu_cluster(2))
    assert pre.max_concurrent_trials == 5 and pre.capacity == 2
    assert any("PENDING" in n for n in pre.notes)


def test_cluster_spec_from_ray_nodes_skips_dead_nodes():
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 8.0, "node:__internal_head__": 1.0}},
        {"Alive": False, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 4.0, "GPU": 1.0}},
        {"Alive": True, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 4.0, "GPU": 1.0}},
    ]
    spec = G.ClusterSpec.from_ray_nodes(nodes)
    assert (spec.cpu, spec.gpu, len(spec.nodes)) == (12.0, 1.0, 2)


# -------------------------------------------------------------------------------- dry run text


def test_dry_run_text_lists_every_trial_with_its_budget():
    cfg = smoke()
    text = G.dry_run_text(cfg, G.preflight(cfg, cpu_cluster(2)))
    assert "2 model(s) x 2 size(s) x 1 optimizer(s) x 2 seed(s) -> 8 trials" in text
    rows = G.grid_rows(cfg)
    assert len(rows) == 8
    # smoke: batch 16 x 3 epochs; 40 images -> 3 steps/epoch -> 9 steps; 120 -> 8 -> 24
    assert [(r["train_size"], r["batch"], r["epochs"], r["steps"]) for r in rows[:3]] == [(40, 16, 3, 9), (40, 16, 3, 9), (120, 16, 3, 24)]
    assert "resources per trial: 1 worker x 0.99 CPU, trained in the Tune trial (no Ray Train" in text
    text = G.dry_run_text(smoke("resources.use_ray_train=true"), G.preflight(smoke("resources.use_ray_train=true"), cpu_cluster(2)))
    assert "resources per trial: 1 worker x 0.99 CPU through Ray Train (+0.01 CPU for the trial driver)" in text
    assert "max concurrent trials: 2 (capacity 2)" in text
    table = G.format_table(rows)
    assert table.count("\n") == 1 + 8 and "logreg" in table


def test_paper_budget_rule_in_the_dry_run():
    rows = G.grid_rows(load_study("paper", overrides=["data.path=/nowhere"], validate=False))
    by_size = {r["train_size"]: (r["batch"], r["epochs"], r["steps"]) for r in rows}
    # PROTOCOLS.md section 1: 100/200 -> batch 4 x 200 epochs; 500/1000 -> batch 16 x 100
    assert by_size == {100: (4, 200, 5000), 200: (4, 200, 10000), 500: (16, 100, 3200), 1000: (16, 100, 6300)}


# -------------------------------------------------------------------------------- resume checks


def _saved_sweep(tmp_path: Path, cfg) -> Path:
    d = tmp_path / "exp"
    d.mkdir()
    (d / "config.yaml").write_text(dump_yaml(cfg))
    (d / "sweep.json").write_text(json.dumps({"fingerprint": cfg.fingerprint()}))
    return d


def test_resume_refuses_a_changed_grid_and_names_the_keys(tmp_path):
    cfg = smoke()
    d = _saved_sweep(tmp_path, cfg)
    assert check_resume(cfg, d)["fingerprint"] == cfg.fingerprint()
    # resources/output/tracking are not part of the grid
    assert check_resume(replace(cfg, output_dir="elsewhere"), d)
    changed = smoke("seeds=[0,1,2]", "data.resolution=48")
    with pytest.raises(ConfigError) as e:
        check_resume(changed, d)
    msg = str(e.value)
    assert "study changed" in msg and "seeds" in msg and "data.resolution" in msg
    assert grid_diff(cfg, changed) == ["data.resolution", "seeds"]
    with pytest.raises(ConfigError, match="no sweep.json"):
        check_resume(cfg, tmp_path)


# -------------------------------------------------------------------------------- progress helpers


def test_summary_table_mean_sd_over_seeds():
    rows = [
        {"model": "cnn", "optimizer": "adam", "train_size": 40, "seed": 0, "test_accuracy": 0.5},
        {"model": "cnn", "optimizer": "adam", "train_size": 40, "seed": 1, "test_accuracy": 0.7},
        {"model": "cnn", "optimizer": "adam", "train_size": 40, "seed": 2, "test_accuracy": 0.9},
        {"model": "cnn", "optimizer": "adam", "train_size": 120, "seed": 0, "test_accuracy": 0.8},
        {"model": "cnn", "optimizer": "adam", "train_size": 120, "seed": 1, "test_accuracy": float("nan")},
        {"model": "lr", "optimizer": "adam", "train_size": 40, "seed": 0, "test_accuracy": 0.6},
        {"model": "lr", "optimizer": "adam", "train_size": 40, "seed": 1, "test_accuracy": 0.6},
    ]
    t = summary_table(rows)
    # mean 0.7, sd (ddof=1) = 0.2; the NaN (failed) seed is left out
    assert t.loc["cnn", "n=40"] == "0.700 ± 0.200 (n=3)"
    assert t.loc["cnn", "n=120"] == "0.800 (n=1)"
    assert t.loc["lr", "n=40"] == "0.600 ± 0.000 (n=2)"
    assert t.loc["lr", "n=120"] == ""
    rows.append({"model": "cnn", "optimizer": "sgd", "train_size": 40, "seed": 0, "test_accuracy": 0.25})
    t2 = summary_table(rows)
    assert t2.loc["cnn / sgd", "n=40"] == "0.250 (n=1)" and t2.index.name == "model / optimizer"


def test_summary_table_leaves_a_degenerate_trial_out_as_the_report_does():
    """Issue 19.4: one rule for the console, MLflow's summary.csv and the report
    (lungray.report.stats.counted_mask): a constant-output trial is left out of its cell and
    named; a weak trial is not; a cell of degenerate trials keeps them all."""
    rows = [
        {"model": "r18", "optimizer": "adam", "train_size": 50, "seed": 0, "test_accuracy": 0.5, "degenerate": "constant output"},
        {"model": "r18", "optimizer": "adam", "train_size": 50, "seed": 1, "test_accuracy": 0.62, "degenerate": ""},
        {"model": "r18", "optimizer": "adam", "train_size": 50, "seed": 2, "test_accuracy": 0.56, "degenerate": ""},
        {"model": "cnn", "optimizer": "adam", "train_size": 50, "seed": 0, "test_accuracy": 0.5, "degenerate": "constant output"},
        {"model": "cnn", "optimizer": "adam", "train_size": 50, "seed": 1, "test_accuracy": 0.5, "degenerate": "one class for every image, scores that do not rank"},
    ]
    t = summary_table(rows)
    assert t.loc["r18", "n=50"] == "0.590 ± 0.042 (n=2, +1 degenerate)"
    assert t.loc["cnn", "n=50"] == "0.500 ± 0.000 (n=2, all degenerate)"
    from lungray.sweep.progress import format_summary

    assert "same class predicted for every evaluation image" in format_summary(rows)


def test_console_summary_and_report_table_count_the_same_runs():
    """The console (progress.summary_table over the trial directories' flags) and the report
    (tables.summarise over MLflow's predictions) give the same cell mean."""
    import numpy as np

    from lungray.report import _simulate as Sim
    from lungray.report import stats, tables

    rng = np.random.default_rng(0)
    c = Sim.family_correct(rng, Sim.Family(models=2, sizes=2), 1, 3, 120)[0]
    y = np.arange(120) % 2
    probs = np.stack([[[Sim._probs_of(c[m, z, s], y, rng) for s in range(3)] for z in range(2)] for m in range(2)])
    probs[1, 0, 2] = np.tile([0.3, 0.7], (120, 1))  # m1 at n=50, seed 2: constant output
    sw = Sim.sweep_of(c, y, probs=probs)
    preds = tables.prediction_arrays(sw)
    report = tables.summarise(tables.add_derived(sw, preds), ("accuracy",), predictions=preds)
    rows = [dict(r, degenerate=stats.degenerate_output(preds[r["run_id"]][2], preds[r["run_id"]][1]))
            for r in sw.runs.to_dict("records")]
    console = summary_table(rows)
    for r in report.itertuples():
        assert console.loc[r.model, f"n={r.train_size}"].startswith(f"{r.mean:.3f} ± ")
    assert console.loc["m1", "n=50"].endswith("(n=2, +1 degenerate)")


def test_collect_rows_flags_a_degenerate_trial_from_its_predictions(tmp_path):
    import pandas as pd

    from lungray.sweep.expdir import ARTIFACTS_DIR, write_result
    from lungray.sweep.runner import collect_rows, eval_groups_payload

    for tid, probs in (("t0", [[0.7, 0.3], [0.7, 0.3]]), ("t1", [[0.7, 0.3], [0.2, 0.8]])):
        d = tmp_path / "trials" / tid
        (d / ARTIFACTS_DIR).mkdir(parents=True)
        write_result(d, {"complete": True, "model": "cnn", "train_size": 40, "optimizer": "adam", "seed": int(tid[1]),
                         "metrics": {"test_accuracy": 0.5}})
        pd.DataFrame({"image_id": ["a", "b"], "y_true": [0, 1], "prob_Normal": [p[0] for p in probs],
                      "prob_COVID": [p[1] for p in probs]}).to_csv(d / ARTIFACTS_DIR / "predictions.csv", index=False)
    rows = {r["trial_id"]: r for r in collect_rows(tmp_path, None)}
    assert rows["t0"]["degenerate"] == "constant output" and rows["t1"]["degenerate"] == ""
    # the patients of the evaluation images, for the report: codes renumbered in evaluation order
    assert eval_groups_payload(["i0", "i1", "i2", "i3"], [7, 3, 7, 9], [2, 0, 1]) == {"i2": 0, "i0": 0, "i1": 1}


def test_eta_prices_each_remaining_trial_by_its_model_and_size():
    assert math.isnan(eta_by_cell({}, [], [("cnn", 50)], slots=2))
    cnn50, cnn450, r50, r450 = ("cnn", 50), ("cnn", 450), ("r18", 50), ("r18", 450)
    # the first trials were cheap: 10 s each; the ETA is not 10 s x trials left / 2 slots
    done = {cnn50: [10.0, 10.0], r50: [100.0]}
    # pending: cnn50 -> 10 (its cell), cnn450 -> 10 (cnn at another size); running r50 for 90 s
    # -> 10 s left; 30 s of work on min(2 slots, 3 trials left) = 15 s
    assert eta_by_cell(done, [(r50, 90.0)], [cnn50, cnn450], slots=2) == 15.0
    # running r50 for 30 s -> 70 s left: 90 s / 2 slots = 45 s, but that trial alone needs 70 s
    assert eta_by_cell(done, [(r50, 30.0)], [cnn50, cnn450], slots=2) == 70.0
    # + r450 -> 100 (r18 at another size): 190 s / 2 slots = 95 s, but that one trial takes 100 s
    assert eta_by_cell(done, [(r50, 30.0)], [cnn50, r450, cnn450], slots=2) == 100.0
    # a running trial past its cell's mean has nothing left
    assert eta_by_cell(done, [(r50, 130.0)], [cnn50, cnn50, cnn50, cnn50], slots=2) == 20.0
    # a cell of an unseen model costs the mean of all finished trials (40 s) ...
    assert eta_by_cell(done, [], [("vit", 50)], slots=1) == 40.0
    # ... or, if longer, what its running trial has taken so far: 90 s (0 s left for the running one)
    assert eta_by_cell(done, [(("vit", 50), 90.0)], [("vit", 450)], slots=2) == 90.0
    # once r450 has finished trials, they price it, not r18 at 50
    assert eta_by_cell({**done, r450: [300.0]}, [], [r450, r450], slots=2) == 300.0
    assert eta_by_cell(done, [], [], slots=2) == 0.0


def test_eta_and_trial_line():
    assert format_seconds(75) == "1m15s" and format_seconds(3725) == "1h02m" and format_seconds(float("nan")) == "?"
    line = trial_line(3, 8, "simple_cnn|n=40|adam|seed=1", {"test_accuracy": 0.8125}, 24.2, 70)
    assert line == "[3/8] done   simple_cnn|n=40|adam seed 1  test_accuracy=0.8125  24s  ETA 1m10s"
    assert "ETA" not in trial_line(8, 8, "a|n=1|b|seed=0", {}, 1, 0)


# -------------------------------------------------------------------------------- CLI (no Ray)


def test_cli_dry_run_prints_config_grid_and_cluster(capsys, tmp_path):
    from lungray.sweep.cli import main

    rc = main(["--preset", "smoke", "--dry-run", "--output", str(tmp_path), "--set", "seeds=[0]"], prog="size_study.py")
    out = capsys.readouterr().out
    assert rc == 0
    # a summary of the study, not ~100 lines of resolved config (that goes to config.yaml, or -v)
    assert "# study smoke (preset smoke)" in out and "name: smoke" not in out
    # the grid summary once (issue 20.6): the dry run's own first line and table, not the banner's too
    assert out.count("-> 4 trials") == 1 and "= 4 trials" not in out and "local machine" in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_cli_dry_run_says_what_the_cluster_lacks_instead_of_refusing(capsys, tmp_path):
    """Issue 12: a GPU study dry-run on a CPU machine prints its grid and what the cluster lacks (exit 0);
    only a real run is refused by the preflight (one line, exit 2)."""
    from lungray.sweep.cli import main

    cluster = local_cluster_spec()
    if cluster.gpu:  # pragma: no cover - a machine with a GPU schedules it
        pytest.skip("this machine has a GPU")
    rc = main(["--preset", "smoke", "--dry-run", "--set", "resources.gpus_per_worker=1", "--output", str(tmp_path)], prog="size_study.py")
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    assert "-> 8 trials" in out
    assert "cluster lacks: resources.gpus_per_worker=1: a trial needs 1 GPU but the cluster has no GPU" in out
    assert "a real run would be refused" in out
    assert not any(tmp_path.iterdir())
    # the real run's preflight refuses the same grid, naming the resource
    with pytest.raises(ConfigError, match=r"resources.gpus_per_worker=1: a trial needs 1 GPU but the cluster has no GPU"):
        G.preflight(smoke("resources.gpus_per_worker=1"), cluster)


def test_cli_dry_run_refuses_sizes_larger_than_the_phantom_pool(capsys, tmp_path):
    from lungray.sweep.cli import main

    import re

    from lungray.study import load_study
    from lungray.data.adapters import build_manifest
    from lungray.data.split_plan import groups_of, make_splits

    # smoke: 360 phantom images, about 120 held out (whole patients), about 40 for validation:
    # the pool the dry run must count, made here with the same split
    d = load_study("smoke").data
    m = build_manifest(d)
    _, _, pool, _ = make_splits(m["class_index"].to_numpy(), groups_of(m["patient_id"].to_numpy()), m["split"].to_numpy(), d)
    n = len(pool)
    per = np.bincount(m["class_index"].to_numpy()[pool], minlength=2)
    assert main(["--preset", "smoke", "--dry-run", "--set", f"sizes=[40,{n}]", "--output", str(tmp_path)], prog="size_study.py") == 0
    assert re.search(rf"data: training pool {n} images", capsys.readouterr().out)
    rc = main(["--preset", "smoke", "--dry-run", "--set", f"sizes=[40,{n + 1}]", "--output", str(tmp_path)], prog="size_study.py")
    err = capsys.readouterr().err.strip().splitlines()
    # the dry run makes the real held-out split of the phantom (sweep/checks.py) and counts its pool
    assert rc == 2 and err == [f"size_study.py: error: training size {n + 1} is larger than the training pool of {n} images "
                               f"(Normal: {per[0]}, COVID: {per[1]}); use smaller sizes, a smaller data.eval_size/data.val_size, or more data"]
    assert not any(tmp_path.iterdir())


def test_cli_rejects_unknown_keys_before_anything_runs(capsys, tmp_path):
    from lungray.sweep.cli import main

    rc = main(["--preset", "smoke", "--set", "schedule.epoch=3", "--output", str(tmp_path)], prog="size_study.py")
    err = capsys.readouterr().err
    assert rc == 2 and "unknown config key schedule.epoch" in err and "epochs" in err
    assert not any(tmp_path.iterdir())


def test_size_study_script_dry_run():
    """The user's entry point itself (a subprocess: what `python sweeps/size_study.py` does)."""
    p = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "size_study.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr
    assert "study 'phantom_size_study'" in p.stdout and "-> 18 trials" in p.stdout


def test_cli_resolves_preset_yaml_data_and_overrides_in_order(tmp_path):
    from lungray.sweep.cli import build_parser, resolve_config

    y = tmp_path / "study.yaml"
    y.write_text("seeds: [0, 1]\nschedule: {epochs: 7}\n")
    argv = ["--config", str(y), "--set", "schedule.epochs=9", "--source", "covid_radiography",
            "--set", f"data.path={tmp_path}", "--output", str(tmp_path / "out"), "--tracking-uri", "http://mlflow:5000", "--no-report"]
    cfg = resolve_config(build_parser(default_preset="transfer").parse_args(argv), "transfer")
    assert cfg.name == "transfer_4class"  # the script's default preset
    assert cfg.seeds == (0, 1) and cfg.schedule.epochs == 9  # --set wins over the YAML
    assert (cfg.data.source, cfg.data.path) == ("covid_radiography", str(tmp_path))
    assert cfg.output_dir == str(tmp_path / "out") and cfg.tracking.tracking_uri == "http://mlflow:5000"
    assert cfg.report is False
    assert len(cfg.trials()) == 8 * 3 * 2 * 2
    assert 'default_preset="transfer"' in (REPO / "sweeps" / "transfer_study.py").read_text()
