"""A fake sweep logged to MLflow exactly per :mod:`lungray.tracking`, with planted numbers.

scikit-learn tests its learning-curve plumbing with ``MockImprovingEstimator``, whose score is
exactly ``n_train / n_max``; this is the same idea for the report (STYLE.md, practice 5). No
model is trained: every trial's predictions are constructed so that its accuracy is exactly
``accuracy_fn(model, n, n_max, seed)`` (rounded to whole evaluation images), and every other
metric is computed from those predictions, so a test can check the report's tables, intervals
and paired comparisons against numbers it knows in advance:

* by default model ``alpha`` scores ``0.5 + 0.4 * n / n_max - 0.01 * seed``;
* ``beta`` scores 10 points less, and is right on a SUBSET of the images ``alpha`` gets right
  (a planted, real difference: McNemar discordant pairs all favour ``alpha``);
* ``gamma`` makes the very same predictions as ``alpha`` (two identical models: the paired
  difference is exactly 0).

Used by ``tests/test_report*.py`` and ``tests/test_notebooks.py``; not part of the public API.
"""

from __future__ import annotations

import html as _html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from lungray import tracking as T


def default_accuracy(model: str, n: int, n_max: int, seed: int) -> float:
    """The planted learning curves (see the module docstring)."""
    base = 0.5 + 0.4 * n / n_max - 0.01 * seed
    return {"beta": base - 0.10}.get(model, base)


@dataclass
class FakeSweep:
    """What was logged: ids and the exact per-trial numbers, for tests to compare against."""

    tracking_uri: str
    experiment: str
    parent_id: str
    run_ids: dict  # (model, n, optimizer, seed) -> run id
    accuracy: dict  # (model, n, optimizer, seed) -> exact test_accuracy logged
    metrics: dict  # (model, n, optimizer, seed) -> every final metric logged
    correct: dict  # (model, n, optimizer, seed) -> bool array over eval images
    image_ids: list
    class_names: tuple
    failed: dict = field(default_factory=dict)
    skipped: tuple = ()
    ext_accuracy: dict = field(default_factory=dict)  # (set, model, n, optimizer, seed) -> exact ext.<set>.accuracy
    ext_correct: dict = field(default_factory=dict)  # (set, model, n, optimizer, seed) -> bool array over its images


def _study(name: str, models, sizes, seeds, optimizers, class_names, resolution: int, external: Sequence[str] = ()):
    from lungray.config import DataConfig, ExternalSetConfig, ModelConfig, OptimizerConfig, ScheduleConfig, StudyConfig

    ext = tuple(ExternalSetConfig(name=e, hold_out_site=f"site-{i % 3}") for i, e in enumerate(external))
    return StudyConfig(
        name=name,
        data=DataConfig(source="phantom", phantom_n=400, phantom_classes=len(class_names), resolution=resolution, eval_size=100, val_size=40,
                        external=ext),
        models=tuple(m if not isinstance(m, str) else ModelConfig(name="simple_cnn", width=8, label=m) for m in models),
        sizes=tuple(sizes),
        optimizers=tuple(o if not isinstance(o, str) else OptimizerConfig(name=o) for o in optimizers),
        seeds=tuple(seeds),
        schedule=ScheduleConfig(rule="fixed", batch_size=16, epochs=3),
    )


def _probs(correct: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Probabilities whose argmax is the true class exactly where ``correct`` is True."""
    n = y.size
    p = np.zeros((n, k))
    conf = rng.uniform(0.55, 0.95, size=n)
    wrong = (y + 1 + rng.integers(0, k - 1, size=n)) % k if k > 2 else 1 - y
    pred = np.where(correct, y, wrong)
    p[np.arange(n), pred] = conf
    rest = (1.0 - conf) / (k - 1)
    for j in range(k):
        p[:, j] = np.where(pred == j, p[:, j], rest)
    return p


def _classification_metrics(y: np.ndarray, p: np.ndarray, class_names: Sequence[str]) -> tuple[dict, pd.DataFrame, np.ndarray]:
    from sklearn import metrics as skm

    k = len(class_names)
    pred = p.argmax(1)
    labels = list(range(k))
    out = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "log_loss": skm.log_loss(y, p, labels=labels),
        "macro_f1": skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0),
        "weighted_f1": skm.f1_score(y, pred, average="weighted", labels=labels, zero_division=0),
    }
    normal = class_names.index("Normal") if "Normal" in class_names else None
    pos = 1 - normal if (k == 2 and normal is not None) else 1
    if k == 2:
        out["auc"] = skm.roc_auc_score(y == pos, p[:, pos])
        tp = np.sum((pred == pos) & (y == pos))
        out["sensitivity"] = tp / max(1, np.sum(y == pos))
        out["specificity"] = np.sum((pred != pos) & (y != pos)) / max(1, np.sum(y != pos))
    else:
        out["auc"] = skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels)
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = skm.confusion_matrix(y, pred, labels=labels)
    per = pd.DataFrame({"class": list(class_names), "precision": pr, "recall": rc, "f1": f1, "support": sup})
    per["missed_as_normal"] = [int(cm[i, normal]) if normal is not None and i != normal else 0 for i in range(k)]
    for i, c in enumerate(class_names):
        out[f"precision__{T.metric_key(c)}"] = pr[i]
        out[f"recall__{T.metric_key(c)}"] = rc[i]
        out[f"f1__{T.metric_key(c)}"] = f1[i]
        if normal is not None:
            out[f"missed_as_normal__{T.metric_key(c)}"] = per["missed_as_normal"].iloc[i]
    return {T.TEST_PREFIX + k_: float(v) for k_, v in out.items()}, per, cm


def log_fake_sweep(
    tracking_uri: str,
    experiment: str = "fake_sweep",
    *,
    models: Sequence = ("alpha", "beta", "gamma"),
    sizes: Sequence[int] = (25, 50, 100, 200),
    seeds: Sequence[int] = (0, 1, 2),
    optimizers: Sequence = ("adam",),
    class_names: Sequence[str] = ("Normal", "COVID"),
    n_eval: int = 200,
    epochs: int = 3,
    accuracy_fn: Callable[[str, int, int, int], float] = default_accuracy,
    identical: Mapping[str, str] = {"gamma": "alpha"},
    fail: Mapping[tuple, str] = {},
    skip: Sequence[tuple] = (),
    data_root: str = "",
    eval_image_ids: Optional[Sequence[str]] = None,
    eval_labels: Optional[Sequence[int]] = None,
    checkpoint_fn: Optional[Callable] = None,
    probs_fn: Optional[Callable] = None,
    artifact_root: Optional[str] = None,
    resolution: int = 32,
    best_epoch_fn: Optional[Callable[[str, int, int], int]] = None,
    degenerate: Sequence[tuple] = (),
    class_counts: Optional[Mapping[str, Mapping[str, int]]] = None,
    external: Mapping[str, Callable[[str, int, int, int], float]] = {},
    n_external: int = 120,
) -> FakeSweep:
    """Log a parent run and one child run per trial; see the module docstring for the plant.

    ``fail`` maps ``(model, n, seed)`` to an error message: that trial is logged FAILED with the
    ``lungray.error`` tag and no test metrics. ``skip`` lists ``(model, n, seed)`` never logged
    (a sweep still running). ``identical`` maps a model to another whose predictions it copies.
    ``checkpoint_fn(trial_config, run_dir) -> path`` may write a ``best.pt`` to log;
    ``probs_fn(trial_config) -> (n_eval, n_classes)`` replaces the planted predictions with real
    ones (a trained model's), the metrics then being computed from those.
    ``best_epoch_fn(model, n, seed) -> epoch`` (0-based) plants where each trial's validation
    loss is lowest (a V: falling to that epoch, rising after it); by default it falls to the
    last epoch (every trial ends its budget still improving). ``degenerate`` lists
    ``(model, n, seed)`` whose output is constant (the same probabilities for every image: a
    run the report sets apart). ``class_counts`` replaces split entries of the logged class
    counts (``{"eval": {"Normal": 0, ...}}``).
    ``external`` maps an external evaluation set's name to its planted accuracy function (issue 24):
    each trial is also scored on ``n_external`` images of that set (``ext.<name>.*`` metrics and
    ``predictions.ext.<name>.csv``), exactly that accuracy; ``FakeSweep.ext_accuracy`` /
    ``ext_correct`` hold what was logged, keyed ``(name, model, n, optimizer, seed)``.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from lungray import __version__
    from lungray.config import dump_yaml

    class_names = tuple(class_names)
    k = len(class_names)
    cfg = _study(experiment, models, sizes, seeds, optimizers, class_names, resolution, tuple(external))
    client = MlflowClient(tracking_uri)
    work = Path(tempfile.mkdtemp(prefix="lungray-fake-"))
    art = artifact_root or (work / "artifacts").as_uri()
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=art)

    # fixed evaluation set, balanced labels in a fixed order
    if eval_image_ids is None:
        image_ids = [f"img{i:05d}" for i in range(n_eval)]
        y = np.arange(n_eval) % k
    else:
        image_ids = [str(i) for i in eval_image_ids]
        y = np.asarray(eval_labels, dtype=np.int64)
        n_eval = len(image_ids)

    parent = client.create_run(
        exp_id,
        run_name=f"{experiment}-sweep",
        tags={
            T.ROLE: T.ROLE_SWEEP,
            T.STUDY: cfg.name,
            T.CONFIG_FP: cfg.fingerprint(),
            T.DATASET_FP: "fakefingerprint0123",
            T.VERSION: __version__,
            T.GIT_COMMIT: "0123456789abcdef",
            T.STORAGE_PATH: str(work / "ray"),
            T.DATA_ROOT: data_root,
        },
    )
    pid = parent.info.run_id
    client.log_batch(pid, params=[Param("sizes", json.dumps(list(sizes))), Param("data.resolution", str(resolution))])
    pdir = work / "parent"
    pdir.mkdir()
    (pdir / T.CONFIG_YAML).write_text(dump_yaml(cfg))
    n_pool = 400 - n_eval
    (pdir / T.LEAKAGE_JSON).write_text(json.dumps(_fake_leakage(n_eval)))
    counts = {s: {c: int(n // k) for c in class_names} for s, n in (("eval", n_eval), ("val", 40), ("pool", n_pool))}
    counts.update(class_counts or {})  # e.g. an evaluation set that lost a class (issue 18)
    (pdir / T.DATA_SUMMARY).write_text(
        json.dumps(
            {
                "class_names": list(class_names),
                "class_counts": counts,
                "subset_sizes": list(sizes),
                "source": "phantom",
                "resolution": resolution,
                "preprocess": "none",
                "augmentation": "none",
                "normalization": "pool",
                "fingerprint": "fakefingerprint0123",
                "info": {"external": [{"name": e, "kind": "site", "site": f"site-{i % 3}", "n_images": n_external,
                                       "class_counts": {c: n_external // k for c in class_names}, "taken_out_of_study": n_external}
                                      for i, e in enumerate(external)]},
            }
        )
    )
    pool = list(range(n_eval, n_eval + max(sizes)))
    subsets = {str(n): {str(s): [pool[(j + 7 * s) % len(pool)] for j in range(n)] for s in seeds} for n in sizes}
    (pdir / T.SPLITS_JSON).write_text(json.dumps({"eval": list(range(n_eval)), "val": [], "pool": pool,
                                                  "dropped": [5, 9, 11], "subsets": subsets}))
    client.log_artifacts(pid, str(pdir))

    n_max = max(sizes)
    fake = FakeSweep(tracking_uri, experiment, pid, {}, {}, {}, {}, image_ids, class_names, dict(fail), tuple(skip))
    for trial in cfg.trials():
        m, n, o, s = trial.model.key, trial.train_size, trial.optimizer.key, trial.seed
        key = (m, n, o, s)
        if (m, n, s) in skip:
            continue
        tags = {
            T.PARENT: pid,
            T.ROLE: T.ROLE_TRIAL,
            T.TRIAL_ID: f"{trial.name}",
            T.AXIS_TAGS["model"]: m,
            T.AXIS_TAGS["train_size"]: str(n),
            T.AXIS_TAGS["optimizer"]: o,
            T.AXIS_TAGS["seed"]: str(s),
            T.CELL: trial.cell,
        }
        run = client.create_run(exp_id, run_name=trial.name, tags=tags)
        rid = run.info.run_id
        fake.run_ids[key] = rid
        params = [Param("model", m), Param("train_size", str(n)), Param("optimizer", o), Param("seed", str(s)),
                  Param("model.head", trial.model.head), Param("optimizer.lr", str(trial.optimizer.lr))]
        # per-epoch curves: losses fall with the epoch, a little worse for larger seeds
        metrics = []
        hist = []
        best_e = epochs - 1 if best_epoch_fn is None else int(best_epoch_fn(m, n, s))
        for e in range(epochs):
            row = {
                "epoch": e,
                "train_loss": 1.0 / (e + 1),
                "train_accuracy": 0.5 + 0.1 * e,
                "val_loss": (1.2 / (e + 1) if best_epoch_fn is None else 0.2 + 0.1 * abs(e - best_e)) + 0.01 * s + 0.1 * n_max / n,
                "val_accuracy": 0.5 + 0.08 * e,
                "val_auc": 0.6 + 0.1 * e,
                "lr": 1e-3,
            }
            hist.append(row)
            metrics += [Metric(kk, float(v), 0, e) for kk, v in row.items() if kk != "epoch"]
        if (m, n, s) in fail:
            client.log_batch(rid, metrics=metrics[: len(T.EPOCH_METRICS)], params=params)
            client.set_tag(rid, T.ERROR, fail[(m, n, s)])
            client.set_terminated(rid, "FAILED")
            continue
        src = identical.get(m, m)
        acc = accuracy_fn(src, n, n_max, s)
        n_right = int(round(acc * n_eval))
        # the correct set is a prefix of one permutation per (seed, size): weaker models are right
        # on a subset of the images stronger ones get right (a planted, paired difference)
        order = np.random.default_rng([s, n]).permutation(n_eval)
        correct = np.zeros(n_eval, dtype=bool)
        correct[order[:n_right]] = True
        probs = _probs(correct, y, k, np.random.default_rng([s, n, 7]))
        if probs_fn is not None:
            probs = np.asarray(probs_fn(trial), dtype=np.float64)
            probs = probs / probs.sum(1, keepdims=True)  # float32 softmax rows sum to 1 +- 1e-7
            correct = probs.argmax(1) == y
            n_right = int(correct.sum())
        if (m, n, s) in set(map(tuple, degenerate)):  # a collapsed run: one output for every image
            probs = np.tile(np.linspace(1.0, 2.0, k) / np.linspace(1.0, 2.0, k).sum(), (n_eval, 1))
            correct = probs.argmax(1) == y
            n_right = int(correct.sum())
        final, per_class, cm = _classification_metrics(y, probs, class_names)
        final.update({"best_epoch": float(best_e), "epochs_run": float(epochs), "train_seconds": 1.0 + n / 100,
                      "eval_seconds": 0.5, "trial_overhead_seconds": 0.2})
        metrics += [Metric(kk, float(v), 0, 0) for kk, v in final.items()]
        client.log_batch(rid, metrics=metrics, params=params)
        rdir = work / rid
        rdir.mkdir()
        pred = pd.DataFrame({"image_id": image_ids, "y_true": y})
        for j, c in enumerate(class_names):
            pred[f"prob_{c}"] = probs[:, j]
        pred.to_csv(rdir / T.PREDICTIONS, index=False)
        for name, fn in external.items():  # issue 24: the same trial on an external set
            ye = np.arange(n_external) % k
            n_ok = int(round(fn(src, n, n_max, s) * n_external))
            ok = np.zeros(n_external, dtype=bool)
            ok[np.random.default_rng([s, n, 11]).permutation(n_external)[:n_ok]] = True
            pe = _probs(ok, ye, k, np.random.default_rng([s, n, 13]))
            ext_final, _, _ = _classification_metrics(ye, pe, class_names)
            client.log_batch(rid, metrics=[Metric(T.ext_key(name, kk[len(T.TEST_PREFIX):]), float(v), 0, 0)
                                           for kk, v in ext_final.items() if kk.startswith(T.TEST_PREFIX)])
            ep = pd.DataFrame({"image_id": [f"{name}{i:05d}" for i in range(n_external)], "y_true": ye})
            for j, c in enumerate(class_names):
                ep[f"prob_{c}"] = pe[:, j]
            ep.to_csv(rdir / T.ext_predictions(name), index=False)
            fake.ext_accuracy[(name, *key)] = n_ok / n_external
            fake.ext_correct[(name, *key)] = ok
        per_class.to_csv(rdir / T.PER_CLASS, index=False)
        pd.DataFrame(cm, index=class_names, columns=class_names).to_csv(rdir / T.CONFUSION_CSV)
        pd.DataFrame(hist).to_csv(rdir / T.HISTORY, index=False)
        (rdir / T.TRIAL_CONFIG).write_text(json.dumps(trial.to_dict()))
        client.log_artifacts(rid, str(rdir))
        if checkpoint_fn is not None:
            ck = checkpoint_fn(trial, rdir)
            if ck is not None:
                client.log_artifact(rid, str(ck), T.CHECKPOINT_DIR)
        client.set_terminated(rid, "FINISHED")
        fake.accuracy[key] = n_right / n_eval
        fake.metrics[key] = final
        fake.correct[key] = correct
    client.set_terminated(pid, "FINISHED")
    return fake


# ---------------------------------------------------------------------------------------------
# headless Chromium: does the report open offline, load every image, and fetch nothing?
# ---------------------------------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)

_IMG_PROBE = """<script>
window.addEventListener('load', function () {
  var out = [];
  var imgs = document.images;
  for (var i = 0; i < imgs.length; i++) {
    out.push([imgs[i].complete && imgs[i].naturalWidth > 0, imgs[i].naturalWidth, imgs[i].getAttribute('src').slice(0, 22)]);
  }
  var heads = [];
  var hs = document.querySelectorAll('h1, h2');
  for (var j = 0; j < hs.length; j++) { heads.push(hs[j].textContent.trim()); }
  var hl = document.getElementById('headline');
  var box = hl ? hl.getBoundingClientRect() : null;
  var layout = {headings: heads, headline_top: box ? box.top + window.scrollY : -1,
                headline_height: box ? box.height : 0, headline_text: hl ? hl.innerText : ''};
  var pre = document.createElement('pre');
  pre.id = 'lungray-image-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
  var pre2 = document.createElement('pre');
  pre2.id = 'lungray-layout-probe';
  pre2.textContent = JSON.stringify(layout);
  document.body.appendChild(pre2);
});
</script>"""


@dataclass
class BrowserCheck:
    screenshot: Path
    images: list  # [loaded, naturalWidth, src prefix] per <img>, in document order
    page_requests: list  # URLs the PAGE asked the network for (browser housekeeping excluded)
    net_log: Path
    layout: dict = field(default_factory=dict)  # headings (h1/h2 in order), the headline's box and text


def page_requests_from_net_log(path: str | Path) -> list[str]:
    """URLs requested by the page itself in a Chromium ``--log-net-log`` file.

    Chromium also talks to Google on its own (component updater, time sync, accounts) even
    with background networking disabled; those requests carry ``initiator: "not an origin"``
    and no ``file://`` isolation key. A request made by a page opened from a file has the
    opaque initiator ``"null"`` and a ``file://`` network isolation key.
    """
    d = json.loads(Path(path).read_text())
    types = {v: k for k, v in d["constants"]["logEventTypes"].items()}
    out = []
    for e in d["events"]:
        if types.get(e["type"]) != "URL_REQUEST_START_JOB":
            continue
        p = e.get("params", {})
        if "url" not in p:  # the end-of-job event carries no parameters
            continue
        if p.get("initiator") != "not an origin" or "file://" in str(p.get("network_isolation_key", "")):
            out.append(p.get("url", ""))
    return out


def chromium_check(html_path: str | Path, workdir: str | Path, *, width: int = 1400, height: int = 3000,
                   timeout: int = 180) -> BrowserCheck:
    """Open ``html_path`` in headless Chromium twice: once as is, for a screenshot and a
    net-log; once as a copy with a small probe script (CSP relaxed for that script only) that
    records whether every image decoded, read back with ``--dump-dom``."""
    import re
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise FileNotFoundError("chromium not found (apt-get install chromium)")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    html_path = Path(html_path).resolve()
    shot, net = work / "screenshot.png", work / "net-log.json"
    subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile1'}", f"--screenshot={shot}",
         f"--window-size={width},{height}", f"--log-net-log={net}", "--virtual-time-budget=5000", html_path.as_uri()],
        check=True, timeout=timeout, capture_output=True,
    )
    text = html_path.read_text(encoding="utf-8")
    text = text.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    probe = work / "probe.html"
    probe.write_text(text.replace("</body>", _IMG_PROBE + "</body>", 1), encoding="utf-8")
    res = subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile2'}", "--dump-dom", "--virtual-time-budget=10000",
         probe.as_uri()],
        check=True, timeout=timeout, capture_output=True, text=True,
    )
    m = re.search(r'<pre id="lungray-image-probe">(.*?)</pre>', res.stdout, re.S)
    images = json.loads(m.group(1)) if m else None
    if images is None:
        raise RuntimeError("the image probe did not run in Chromium (no lungray-image-probe element in the DOM)")
    m2 = re.search(r'<pre id="lungray-layout-probe">(.*?)</pre>', res.stdout, re.S)
    layout = json.loads(_html.unescape(m2.group(1))) if m2 else {}
    return BrowserCheck(shot, images, page_requests_from_net_log(net), net, layout)


def _fake_leakage(n_eval: int) -> dict:
    """The leakage payload a sweep logs (:func:`lungray.sweep.payloads.leakage_payload`): the data
    layer's summary and the audit document of :func:`lungray.data.leakage.leakage_doc`."""
    summary = {"mode": "drop", "max_distance": 6, "grouping": "grouped by patient id and by the audit's duplicate clusters",
               "exact_pairs": 1, "near_pairs": 3, "clusters": 2, "largest_cluster": 3, "cross_split_pairs": 0,
               "pool_images_flagged": 0, "val_images_flagged": 0, "dropped": 0}
    zero = {"sha256": 0, "phash": 0, "keypoints": 0}
    audit = {
        "audit_version": 2, "n_images": 400, "pairs_by_stage": {"sha256": 1, "phash": 1, "keypoints": 2},
        "clusters": {"n_clusters": 2, "n_images_in_clusters": 5, "largest": 3,
                     "examples": [{"size": 3, "members": ["img-005", "img-009", "img-011"], "more": 0},
                                  {"size": 2, "members": ["img-300", "img-301"], "more": 0}]},
        "cross_split": {"pool-val": dict(zero), "pool-eval": dict(zero), "val-eval": dict(zero)},
        "examples": [
            {"row_a": 5, "row_b": 9, "id_a": "img-005", "id_b": "img-009", "split_a": "pool", "split_b": "pool",
             "stage": "sha256", "transform": "identical", "distance": 0.0, "ncc": None},
            {"row_a": 5, "row_b": 11, "id_a": "img-005", "id_b": "img-011", "split_a": "pool", "split_b": "pool",
             "stage": "keypoints", "transform": "rot +12 deg, zoom 1.04, mirrored", "distance": 57.0, "ncc": 0.93},
        ],
        "settings": summary,
    }
    return {"summary": summary, "audit": audit}

