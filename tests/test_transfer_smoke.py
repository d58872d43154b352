"""The ``transfer`` preset's CI twin, for real: ``python sweeps/transfer_study.py --preset transfer_smoke``.

Frozen trunks, a torchvision classifier with only its last layer trained, the preprocessing x
normalisation variants (ImageNet per channel, fixed radiograph numbers, CLAHE) as one paired
sweep, the whole pool as the training size, Keras inverse-time decay; the report must show a
Grad-CAM panel for every arm (issue 12: frozen backbones used to get none).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lungray import tracking as T
from lungray.study import load_study
from lungray.sweep import mlflow_run as M

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _env():
    import os

    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    return env


def test_transfer_smoke_twin_end_to_end_with_a_panel_for_every_arm(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "sweeps" / "transfer_study.py"), "--preset", "transfer_smoke",
                        "--output", str(tmp_path / "runs"), "--address", "local"],
                       capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=1800)
    assert p.returncode == 0, (p.stdout[-4000:], p.stderr[-4000:])
    cfg = load_study("transfer_smoke")
    (exp_dir,) = [d for d in (tmp_path / "runs").iterdir() if (d / "sweep.json").exists()]
    state = json.loads((exp_dir / "sweep.json").read_text())

    # size 'all' is the pool's real count, in the log, the saved config and every trial
    m = re.search(r"training size 'all' = (\d+) images", p.stdout)
    assert m, p.stdout[-3000:]
    n_pool = int(m.group(1))
    assert "sizes:\n- " + str(n_pool) in (exp_dir / "config.yaml").read_text()
    trials = pd.read_csv(exp_dir / "trials.csv")
    arms = [t.arm for t in cfg.with_pool_size(n_pool).trials()]
    assert sorted(trials["model"]) == sorted(arms) and (trials["train_size"] == n_pool).all()
    assert (trials["status"] == "done").all()

    # MLflow carries the variant axis: the arm as the model coordinate, the variant and its settings
    c = M.client(state["tracking_uri"])
    children = [r for r in c.search_runs([state["experiment_id"]]) if r.data.tags.get(T.ROLE) == T.ROLE_TRIAL]
    by_arm = {r.data.params["model"]: r.data.params for r in children}
    assert sorted(by_arm) == sorted(arms)
    assert by_arm["tv:resnet18[backbone]@clahe"]["variant.preprocess"] == "clahe"
    assert by_arm["tv:resnet18[backbone]@radiograph"]["train.normalization"] == "fixed"
    assert by_arm["tv:resnet18[backbone]@radiograph"]["train.norm_mean"] == "[0.5]"
    assert by_arm["tv:alexnet[fc_only]@imagenet"]["optimizer.scheduler"] == "inverse_time"
    assert {r.data.tags["lungray.variant"] for r in children} == {"imagenet", "radiograph", "clahe"}

    # the report: no failed part, a panel with every arm, each rebuilt checkpoint reproduces its predictions
    html = (exp_dir / "report" / "report.html").read_text()
    assert 'class="error"' not in html
    gradcam = html[html.index('id="gradcam"'):html.index('id="pointing"')]
    panel = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', gradcam)
    assert panel and len(panel.group(1)) * 3 // 4 > 50_000  # the panels of 9 arms, embedded (print files only on request)
    section = html[html.index("<h3>Target layers</h3>"): html.index("<h3>Checkpoint check</h3>")]
    for arm in arms:
        assert f">{arm}<" in section, arm
    assert section.count(">last_conv<") == 6 and section.count(">backbone.body.features.10<") == 3
    check = html[html.index("<h3>Checkpoint check</h3>"):]
    check = check[: check.index("</section>")]
    rows = re.findall(r'<td class="txt">([^<]+)</td><td class="">(\d+)</td><td class="">(\d+)</td>', check)
    assert len(rows) == len(arms) and all(a == b for _, a, b in rows), rows
    # the variants are paired: same subsets, same evaluation images
    paired = pd.read_csv(exp_dir / "report" / "paired.csv")
    both = {"tv:resnet18[backbone]@imagenet", "tv:resnet18[backbone]@clahe"}  # ordered higher mean first
    pair = paired[[{a, b} == both for a, b in zip(paired.model_a, paired.model_b)]]
    counts = pd.read_csv(exp_dir / "report" / "class_counts.csv").set_index("split")
    assert len(pair) == 1 and int(pair.n_images.iloc[0]) == int(counts.loc["eval", "total"])
