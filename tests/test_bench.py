"""The bench scripts run end to end (``--quick``) and print their ratio lines.

Never a time or a ratio *value* is asserted: these machines are shared and noisy (issue 5);
the figures live in ``bench/RESULTS.md``. What is asserted: the script exits 0, prints the
machine header and every ``RATIO <name> = <number>`` line it promises, and the small pure
helpers in ``bench/_common.py`` compute what they say.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import _common as C  # noqa: E402

RATIO_LINE = re.compile(r"^RATIO (\S+) = (-?[0-9.]+|nan|inf)", re.M)


def run_script(name: str, *args: str, timeout: int = 600) -> tuple[str, dict[str, float]]:
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    r = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{name} {' '.join(args)} exited {r.returncode}:\n{out[-6000:]}"
    assert f"== bench_{name.split('_', 1)[1].split('.')[0]}" in r.stdout, r.stdout[:2000]
    assert "cpus" in r.stdout and "torch" in r.stdout and "date" in r.stdout  # machine info printed
    ratios = {m.group(1): float(m.group(2)) for m in RATIO_LINE.finditer(r.stdout)}
    return r.stdout, ratios


# ------------------------------------------------------------------------------------------
# pure helpers
# ------------------------------------------------------------------------------------------


def test_interleave_alternates_order_and_pairs_rounds():
    calls = []
    counter = {"a": 0, "b": 0}

    def mk(name, value):
        def f():
            calls.append(name)
            counter[name] += 1
            return value * counter[name]

        return f

    res = C.interleave({"a": mk("a", 1.0), "b": mk("b", 10.0)}, 3, verbose=False)
    assert calls == ["a", "b", "b", "a", "a", "b"]  # A B, B A, A B
    assert res == {"a": [1.0, 2.0, 3.0], "b": [10.0, 20.0, 30.0]}
    assert C.paired_ratio(res["b"], res["a"]) == 10.0


def test_median_paired_ratio_and_spread():
    assert C.median([3.0, 1.0, 2.0]) == 2.0
    assert C.median([1.0, float("nan"), 3.0]) == 2.0  # NaN rounds are ignored
    assert math.isnan(C.median([]))
    # per-round ratios 2, 1, 4 -> median 2 (the ratio of medians would be 6/3 = 2 too, but
    # a drifting machine is where they differ: see the next line)
    assert C.paired_ratio([2.0, 6.0, 20.0], [1.0, 6.0, 5.0]) == 2.0
    assert C.paired_ratio([1.0, 1.0], [0.0, 2.0]) == 0.5  # a zero denominator round is dropped
    assert C.spread([3.0, 1.5, 2.0]) == "1.5-3.0"


def test_fit_line_is_exact_on_a_line():
    import bench_sweep

    a, b, r2 = bench_sweep.fit_line([2.0, 4.0, 8.0], [30.0, 50.0, 90.0])
    assert (round(a, 9), round(b, 9), round(r2, 9)) == (10.0, 10.0, 1.0)
    a, b, r2 = bench_sweep.fit_line([2.0, 4.0, 8.0], [30.0, 70.0, 90.0])
    assert r2 < 1.0


def test_summarise_sweep_efficiency_by_hand():
    import bench_sweep

    res = {
        "t0": 0.0,
        "t1": 100.0,
        "n_trials": 2,
        "trials": [
            {"status": "FINISHED", "start": 10.0, "end": 50.0, "setup": 1.0, "train": 30.0, "eval": 2.0},
            {"status": "FINISHED", "start": 12.0, "end": 60.0, "setup": 1.0, "train": 36.0, "eval": 4.0},
        ],
    }
    s = bench_sweep.summarise(res, slots=2)
    # compute 72 s; run_study wall 100 s x 2 slots; trial span 10..60 = 50 s x 2 slots
    assert s["eff (run_study)"] == pytest.approx(72 / 200)
    assert s["eff (span)"] == pytest.approx(72 / 100)
    # overhead = trial wall - train - eval: (40 - 32, 48 - 40) = (8, 8)
    assert s["overhead s"] == pytest.approx(8.0)
    assert s["trial wall s"] == pytest.approx(44.0)
    assert s["finished"] == 2 and s["trial span s"] == 50.0


def test_fixed_cost_phases_by_hand():
    """Section 4's phases from a sweep's timed console lines and its trials' runs."""
    import bench_sweep

    res = {
        "t0": 100.0,
        "t1": 140.0,
        "lines": [(101.0, "data: phantom: 400 images"), (102.0, "data: 2 classes; eval ..."), (106.0, "cluster: 2 CPUs"),
                  (108.5, "experiment directory: /x"), (130.0, "cluster: again (ignored: the first one counts)")],
        "trials": [  # three trials on 2 slots: the first two are each slot's first
            {"start": 115.0, "end": 121.0, "train": 1.0, "eval": 0.5},
            {"start": 116.0, "end": 123.0, "train": 1.5, "eval": 0.5},
            {"start": 124.0, "end": 126.0, "train": 1.0, "eval": 0.5},
            {"start": 0.0, "end": 0.0, "train": 9.0, "eval": 9.0},  # never ended: left out
        ],
        "cpu": {"driver": 6.0, "ray services": 3.0, "trial processes": 20.0, "total": 29.0},
        "load_start": 1.5,
    }
    f = bench_sweep.fixed_cost(res, slots=2)
    assert f["run_study s"] == 40.0
    assert f["fixed s"] == pytest.approx(40.0 - 5.0 / 2)  # compute 1.5 + 2.0 + 1.5
    assert f["data s"] == pytest.approx(2.0)  # to the LAST data line
    assert f["ray + preflight s"] == pytest.approx(4.0) and f["mlflow s"] == pytest.approx(2.5)
    assert f["to first trial s"] == pytest.approx(115.0 - 108.5)
    # overheads (wall - compute): 4.5, 5.0, 0.5; each slot's first beyond the others' median 0.5
    assert f["first trial extra s"] == pytest.approx(C.median([4.0, 4.5]))
    assert f["end s"] == pytest.approx(140.0 - 126.0)
    assert f["cpu total s"] == 29.0 and f["fixed cpu s"] == pytest.approx(29.0 - 5.0)
    assert f["cpu driver s"] == 6.0 and f["load"] == 1.5


def test_print_ratio_format(capsys):
    C.print_ratio("x_vs_y", 0.9512, 0.95)
    C.print_ratio("z", 0.5, 0.95, note="(why)")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "RATIO x_vs_y = 0.951  (target >= 0.95: met)"
    assert out[1] == "RATIO z = 0.500  (target >= 0.95: MISSED)  (why)"


# ------------------------------------------------------------------------------------------
# the scripts, --quick
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.bench
def test_bench_trial_quick():
    out, ratios = run_script("bench_trial.py", "--quick")
    assert {"trial_loop_vs_bare", "ray_trial_vs_bare", "tune_trial_vs_bare", "ray_sweep_vs_run_trial"} <= set(ratios), out
    assert all(v > 0 for v in ratios.values()), ratios
    for variant in ("bare", "run_trial", "run_trial, ckpt every epoch (before)", "ray train, sweep worker"):
        assert f"  {variant} " in out


@pytest.mark.slow
@pytest.mark.bench
def test_bench_segmentation_quick():
    out, ratios = run_script("bench_segmentation.py", "--quick")
    assert set(ratios) == {"seg_trial_loop_vs_bare_smp"} and ratios["seg_trial_loop_vs_bare_smp"] > 0, out
    assert "  bare smp " in out and "  run_trial (segmentation) " in out
    assert "smp U-Net tu-resnet10t (decoder width 4" in out  # the same network in both: its size is checked


@pytest.mark.slow
@pytest.mark.bench
def test_diagnose_unet_twin_quick():
    """The issue-21.5 diagnosis runs every variant (a Dice table, not a ratio: no RATIO lines)."""
    r = subprocess.run([sys.executable, str(BENCH / "diagnose_unet_twin.py"), "--quick"], cwd=str(REPO), capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "== diagnose_unet_twin ==" in r.stdout
    import diagnose_unet_twin as D

    table = re.findall(r"^DICE (\S+)\s+16\s+([0-9.]+|nan)\s+.*\s(\d)/1$", r.stdout, re.M)
    assert [v for v, _, _ in table] == list(D.VARIANTS), r.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.bench
def test_bench_data_quick():
    out, ratios = run_script("bench_data.py", "--quick")
    want = {"data_pipeline_w0", "data_pipeline_w1", "decode_png_ray_vs_serial", "decode_dcm_ray_vs_serial",
            "decode_png_ray_vs_serial_blas1", "decode_dcm_ray_vs_serial_blas1",
            "decode_png_cache_hit_speedup", "decode_dcm_cache_hit_speedup", "loader_images_per_s_per_worker_64px"}
    assert want <= set(ratios), out
    assert all(v > 0 for v in ratios.values()), ratios
    assert "loader workers needed for >= 0.95 here" in out


@pytest.mark.slow
@pytest.mark.bench
def test_bench_leakage_quick():
    out, ratios = run_script("bench_leakage.py", "--quick")
    assert "recall per transform" in out and "false pairs (different patients / different real files)" in out
    assert set(ratios) >= {"recall_keras_mix", "recall_keras_mix_markings", "false_pair_rate", "false_pair_rate_shared_markings",
                           "clusters_joining_patients", "copies_in_cluster", "cost_exponent", "verified_exponent"}
    for t in ("rotation 30", "zoom 0.9", "shift 10%", "keras mix", "mix + markings"):
        assert f"phantom  {t}" in out
    for g in ("phantom (1 site)", "second generator", "real (RG1 + CR tiles)"):
        assert g in out
    assert "cost against n" in out and "without mask and cap" in out


@pytest.mark.slow
@pytest.mark.bench
def test_bench_phantom_quick():
    out, ratios = run_script("bench_phantom.py", "--quick", "--curve")
    assert {"generation_defaults_over_clean", "data_build_audit_over_off", "data_build_cpu_s"} <= set(ratios), out
    assert "the default preset's data build" in out and "accuracy of the calibration CNN" in out


@pytest.mark.slow
@pytest.mark.bench
def test_bench_sweep_quick():
    out, ratios = run_script("bench_sweep.py", "--quick")
    assert {"noop_fit_seconds", "sweep_efficiency_smoke", "sweep_efficiency_smoke_span"} <= set(ratios), out
    assert all(v > 0 for v in ratios.values()), ratios
    # the smoke grid really ran its 8 trials to the end
    row = next(line for line in out.splitlines() if line.strip().startswith("smoke grid (8 trials) "))
    assert row.split()[4:6] == ["8", "8"], row  # trials, finished


@pytest.mark.slow
@pytest.mark.bench
def test_bench_report_quick():
    out, ratios = run_script("bench_report.py", "--quick", timeout=1500)
    want = {"report_cli_wall_after_vs_before", "report_cli_cpu_after_vs_before", "report_cli_print_files_vs_none",
            "report_step_wall_after_vs_before", "report_step_cpu_after_vs_before"}
    assert want <= set(ratios), out
    assert all(v > 0 for v in ratios.values()), ratios
    for variant in ("cli before", "cli after", "cli after, print files", "step before", "step after"):
        assert f"  {variant} " in out
    # the after build prints one line ("wrote ..."), the before one printed it twice
    row = next(line for line in out.splitlines() if line.startswith("  cli after "))
    assert row.split()[-1] == "1", row


def test_sweep_series_grids_are_k_identical_trials():
    import bench_sweep

    from lungray.study import load_study

    assert bench_sweep.grid_overrides(bench_sweep.SMOKE) == []
    cfg = load_study("smoke", overrides=bench_sweep.grid_overrides(4))
    trials = cfg.trials()
    assert [t.seed for t in trials] == [0, 1, 2, 3]
    assert {(t.model.name, t.model.width, t.train_size) for t in trials} == {("simple_cnn", 16, 120)}
    assert len(load_study("smoke").trials()) == 8


def test_bench_gpu_quick_skips_or_runs():
    import torch

    out, ratios = run_script("bench_gpu.py", "--quick")
    if torch.cuda.is_available():
        assert {"gpu_amp_cl_vs_fp32_resnet50", "gpu_amp_cl_vs_fp32_densenet121"} <= set(ratios), out
    else:
        assert "no CUDA device: skipped" in out and not ratios


def test_bench_gpu_code_path_on_cpu():
    out, ratios = run_script("bench_gpu.py", "--quick", "--allow-cpu", "--models", "resnet50")
    assert set(ratios) >= {"gpu_amp_cl_vs_fp32_resnet50"}, out
    assert ratios["gpu_amp_cl_vs_fp32_resnet50"] > 0
