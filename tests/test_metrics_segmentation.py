"""Segmentation losses and metrics: hand-worked cases (MONAI style) and independent implementations.

Metric cases, K = 2 (background, lesion), 2 x 3 images; 255 = unknown truth pixel:

    A  truth 1 1 0 / 0 0 0   pred 1 0 0 / 0 1 0   TP 1 FP 1 FN 1: Dice 2/4 = 1/2, IoU 1/3
    B  truth 0 0 0 / 0 1 1   pred all 0           TP 0 FP 0 FN 2: Dice 0, IoU 0 (missed)
    C  truth all 0           pred all 0           empty vs empty: Dice = IoU = 1
    D  truth all 0           pred 0 0 1 / 0 0 0   empty truth, one false positive: 0, 0
    E  truth all 255         pred 1 1 1 / 1 1 1   no valid pixel: NaN, left out of every mean
    F  truth 1 . . / 1 0 0   pred 1 1 1 / 0 0 0   (. = 255) TP 1 FN 1, FP on unknown pixels
                                                  do not count: Dice 2/3, IoU 1/2

    positive images A, B, F: dice_pos = (1/2 + 0 + 2/3) / 3 = 7/18, iou_pos = (1/3 + 0 + 1/2) / 3 = 5/18
    known images A, B, C, D, F: dice_all = (1/2 + 0 + 1 + 0 + 2/3) / 5 = 13/30, iou_all = 11/30
    detection (any foreground predicted): A yes B no C no D yes F yes vs truth A B F:
        sensitivity 2/3, specificity 1/2, accuracy 3/5
    scores A .9 B .3 C .1 D .6 E .99 F .8: positive {.9 .3 .8} vs negative {.1 .6}: AUC 5/6
    pooled pixels (valid only): t0p0 20, t0p1 2, t1p0 4, t1p1 2:
        IoU_bg 20/26, IoU_fg 2/8, miou_global (10/13 + 1/4) / 2 = 53/104, pixel accuracy 22/28
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lungray.metrics.segmentation import (
    SegmentationAccumulator,
    image_confusion,
    image_scores,
    masks_from_probs,
    miou_global,
    per_image_dice,
    per_image_iou,
    segmentation_report,
)
from lungray.train.losses import (
    LOSSES, build_loss, ce_loss, dice_bce_loss, dice_ce_loss, dice_loss, dice_rsna_loss, loss_from_stats, loss_stats, soft_dice,
)

U = 255
TRUTH = np.array(
    [
        [[1, 1, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 1, 1]],
        [[0, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 0]],
        [[U, U, U], [U, U, U]],
        [[1, U, U], [1, 0, 0]],
    ]
)
PRED = np.array(
    [
        [[1, 0, 0], [0, 1, 0]],
        [[0, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 0]],
        [[0, 0, 1], [0, 0, 0]],
        [[1, 1, 1], [1, 1, 1]],
        [[1, 1, 1], [0, 0, 0]],
    ]
)
SCORES = np.array([0.9, 0.3, 0.1, 0.6, 0.99, 0.8])


# --------------------------------------------------------------------------------------------
# metrics: hand-worked
# --------------------------------------------------------------------------------------------


def test_per_image_dice_and_iou_hand_cases():
    d = per_image_dice(PRED, TRUTH, 2)[:, 0]
    i = per_image_iou(PRED, TRUTH, 2)[:, 0]
    np.testing.assert_allclose(d, [1 / 2, 0, 1, 0, np.nan, 2 / 3])
    np.testing.assert_allclose(i, [1 / 3, 0, 1, 0, np.nan, 1 / 2])


def test_report_hand_case():
    r = segmentation_report(PRED, TRUTH, 2, scores=SCORES, class_names=["background", "lesion"])
    assert r["n_images"] == 5 and r["n_pos"] == 3 and r["n_unknown"] == 1
    assert r["dice_pos"] == pytest.approx(7 / 18) and r["iou_pos"] == pytest.approx(5 / 18)
    assert r["dice_all"] == pytest.approx(13 / 30) and r["iou_all"] == pytest.approx(11 / 30)
    assert r["det_sensitivity"] == pytest.approx(2 / 3) and r["det_specificity"] == pytest.approx(1 / 2)
    assert r["det_accuracy"] == pytest.approx(3 / 5) and r["det_auc"] == pytest.approx(5 / 6)
    assert (r["det_n_pos"], r["det_n_neg"]) == (3, 2)
    assert r["miou_global"] == pytest.approx(53 / 104) and r["pixel_accuracy"] == pytest.approx(22 / 28)
    assert r["per_class"] == {"lesion": {"dice_pos": r["dice_pos"], "dice_all": r["dice_all"], "iou_pos": r["iou_pos"], "iou_all": r["iou_all"], "n_pos": 3}}
    conf = image_confusion(PRED, TRUTH, 2).sum(0)
    assert conf.tolist() == [[20, 2], [4, 2]]


def test_empty_and_nan_edges():
    # no positive image at all: the positive mean is NaN (not 0), the all-image mean is defined
    r = segmentation_report(PRED[[2, 3]], TRUTH[[2, 3]], 2, scores=SCORES[[2, 3]])
    assert math.isnan(r["dice_pos"]) and r["dice_all"] == pytest.approx(0.5) and r["n_pos"] == 0
    assert math.isnan(r["det_auc"]) and math.isnan(r["det_sensitivity"]) and r["det_specificity"] == 0.5
    # every mask unknown: everything NaN, nothing raises
    r = segmentation_report(PRED[[4]], TRUTH[[4]], 2)
    assert r["n_images"] == 0 and r["n_unknown"] == 1 and math.isnan(r["dice_all"]) and math.isnan(r["miou_global"])
    # the accumulator gives the same report batch by batch; no scores given: AUC NaN
    acc = SegmentationAccumulator(2)
    for s in (slice(0, 2), slice(2, 5), slice(5, 6)):
        acc.update(PRED[s], TRUTH[s], scores=SCORES[s])
    whole = segmentation_report(PRED, TRUTH, 2, scores=SCORES)
    parts = acc.report()
    for k in whole:
        if k != "per_class":
            assert (math.isnan(whole[k]) and math.isnan(parts[k])) or whole[k] == parts[k], k
    assert math.isnan(segmentation_report(PRED, TRUTH, 2)["det_auc"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="outside 0..1"):
        image_confusion(np.full((1, 2, 2), 2), np.zeros((1, 2, 2), int), 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        image_confusion(np.zeros((1, 2, 2), int), np.full((1, 2, 2), 3), 2)
    with pytest.raises(ValueError, match="differ in shape"):
        image_confusion(np.zeros((1, 2, 2), int), np.zeros((1, 2, 3), int), 2)
    with pytest.raises(ValueError, match="scores has 2 values for 6 images"):
        segmentation_report(PRED, TRUTH, 2, scores=[0.1, 0.2])


def test_probs_to_masks_and_scores():
    # K = 2 softmax: foreground prob = 1 - p_bg; max over pixels
    p = np.zeros((2, 2, 1, 2))
    p[0, 0] = [[0.9, 0.4]]
    p[0, 1] = [[0.1, 0.6]]
    p[1, 0] = [[0.7, 0.8]]
    p[1, 1] = [[0.3, 0.2]]
    assert masks_from_probs(p).tolist() == [[[0, 1]], [[0, 0]]]
    np.testing.assert_allclose(image_scores(p), [0.6, 0.3])
    s = np.array([[[[0.2, 0.5]]], [[[0.49, 0.1]]]])  # K = 1 sigmoid: >= 0.5 is foreground
    assert masks_from_probs(s).tolist() == [[[0, 1]], [[0, 0]]]
    np.testing.assert_allclose(image_scores(s), [0.5, 0.49])


def test_three_classes_macro_over_foreground():
    truth = np.array([[[1, 2], [0, 0]], [[2, 2], [0, 0]]])
    pred = np.array([[[1, 0], [0, 0]], [[2, 0], [0, 0]]])
    # class 1: image 0 Dice 1 (positive), image 1 empty-empty 1; class 2: image 0 Dice 0 (FN only),
    # image 1 2*1/(2+1) = 2/3. dice_pos: class 1 1, class 2 (0 + 2/3)/2 = 1/3 -> macro 2/3
    r = segmentation_report(pred, truth, 3, class_names=["bg", "a", "b"])
    assert r["per_class"]["a"]["dice_pos"] == 1 and r["per_class"]["b"]["dice_pos"] == pytest.approx(1 / 3)
    assert r["dice_pos"] == pytest.approx(2 / 3) and r["per_class"]["b"]["n_pos"] == 2


# --------------------------------------------------------------------------------------------
# metrics: against scikit-learn on random masks
# --------------------------------------------------------------------------------------------


def test_metrics_agree_with_sklearn():
    from sklearn.metrics import f1_score, jaccard_score, roc_auc_score

    rng = np.random.default_rng(0)
    n = 30
    truth = (rng.random((n, 12, 12)) < 0.2).astype(np.int64)
    truth[:8] = 0  # empty images
    pred = (rng.random((n, 12, 12)) < 0.2).astype(np.int64)
    pred[:4] = 0  # some correctly empty
    truth[10, :3] = U  # partly unknown
    d, j = per_image_dice(pred, truth, 2)[:, 0], per_image_iou(pred, truth, 2)[:, 0]
    for k in range(n):
        ok = truth[k] != U
        t, p = truth[k][ok], pred[k][ok]
        assert d[k] == pytest.approx(f1_score(t, p, labels=[1], average="macro", zero_division=1.0)), k
        assert j[k] == pytest.approx(jaccard_score(t, p, labels=[1], average="macro", zero_division=1.0)), k
    ok = truth != U
    assert miou_global(image_confusion(pred, truth, 2)) == pytest.approx(jaccard_score(truth[ok], pred[ok], average="macro"))
    scores = rng.random(n)
    r = segmentation_report(pred, truth, 2, scores=scores)
    assert r["det_auc"] == pytest.approx(roc_auc_score((truth == 1).reshape(n, -1).any(1), scores))


def test_metrics_agree_with_smp_per_image_stats():
    smp = pytest.importorskip("segmentation_models_pytorch")
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (6, 8, 8))
    pred = rng.integers(0, 3, (6, 8, 8))
    tp, fp, fn, _ = smp.metrics.get_stats(torch.from_numpy(pred), torch.from_numpy(truth), mode="multiclass", num_classes=3)
    iou = smp.metrics.iou_score(tp, fp, fn, _, reduction="none").numpy()
    f1 = smp.metrics.f1_score(tp, fp, fn, _, reduction="none").numpy()
    np.testing.assert_allclose(per_image_iou(pred, truth, 3), iou[:, 1:])
    np.testing.assert_allclose(per_image_dice(pred, truth, 3), f1[:, 1:])


# --------------------------------------------------------------------------------------------
# losses: hand-worked
# --------------------------------------------------------------------------------------------

LN3 = math.log(3.0)


def _logits_fg(p_fg_logit: float, k_shape=(1, 2, 2)) -> torch.Tensor:
    """K = 2 logits (0, ln 3) -> softmax (1/4, 3/4) at every pixel."""
    b, h, w = k_shape
    x = torch.zeros(b, 2, h, w, dtype=torch.float64)
    x[:, 1] = p_fg_logit
    return x


def test_dice_loss_hand_cases():
    x = _logits_fg(LN3)  # p_fg = 3/4 everywhere
    t = torch.tensor([[[1, 1], [0, 0]]])
    # fg: sum p y = 3/2, sum p = 3, sum y = 2 -> (3 + 1) / (3 + 2 + 1) = 2/3
    # bg: sum p y = 1/2, sum p = 1, sum y = 2 -> (1 + 1) / (1 + 2 + 1) = 1/2
    torch.testing.assert_close(soft_dice(x, t), torch.tensor([1 / 2, 2 / 3], dtype=torch.float64))
    assert float(dice_loss(x, t)) == pytest.approx(1 - (1 / 2 + 2 / 3) / 2)  # 5/12
    assert float(dice_loss(x, t, include_background=False)) == pytest.approx(1 / 3)
    # ignore: [[1, U], [0, 0]] -> 3 valid pixels. fg (3/2 + 1) / (9/4 + 1 + 1) = 10/17;
    # bg (1 + 1) / (3/4 + 2 + 1) = 8/15
    tu = torch.tensor([[[1, U], [0, 0]]])
    torch.testing.assert_close(soft_dice(x, tu), torch.tensor([8 / 15, 10 / 17], dtype=torch.float64))
    # no smoothing: fg 3 / 5 on the first case
    assert float(soft_dice(x, t, smooth=0.0)[1]) == pytest.approx(3 / 5)


def _prob_map(p_fg: np.ndarray) -> torch.Tensor:
    """K = 2 logits whose softmax puts ``p_fg`` on the foreground (logits 0 and log(p / (1 - p)))."""
    p = torch.as_tensor(p_fg, dtype=torch.float64)
    x = torch.zeros((p.shape[0], 2) + tuple(p.shape[1:]), dtype=torch.float64)
    x[:, 1] = torch.log(p) - torch.log1p(-p)
    return x


def _box(r: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((r, r), dtype=np.int64)
    m[top : top + side, left : left + side] = 1
    return m


def test_the_rsna_studys_dice_loss_hand_cases():
    """``dice_rsna`` is the study's code: 1 - 2 (I + s) / (P + Y + s) on the foreground channel,
    s = 1e-6, batch-global (PROTOCOLS.md section 3); ``dice`` (both channels, s = 1) is not."""
    s = 1e-6
    # A: a 32 x 32 image with a 10 x 10 box, p_fg = 0.01 everywhere ("all background"):
    #    I = 0.01 * 100 = 1, P = 0.01 * 1024 = 10.24, Y = 100
    truth_a = _box(32, 5, 5, 10)[None]
    pred_a = _prob_map(np.full((1, 32, 32), 0.01))
    study_a = 1 - 2 * (1 + s) / (10.24 + 100 + s)  # 0.981858
    loss_a = float(dice_rsna_loss(pred_a, torch.as_tensor(truth_a)))
    assert loss_a == pytest.approx(study_a, rel=1e-9)
    assert loss_a == pytest.approx(0.981858, abs=1e-6)  # the worked figure above, from the loss itself
    #    lungray's `dice` on the same: bg I = 0.99 * 924, P = 0.99 * 1024, Y = 924 -> (2I + 1) / (P + Y + 1);
    #    fg (2 + 1) / (10.24 + 100 + 1); loss 1 - mean: 0.514430, half the study's
    d_bg = (2 * 0.99 * 924 + 1) / (0.99 * 1024 + 924 + 1)
    d_fg = 3 / 111.24
    ours_a = float(dice_loss(pred_a, torch.as_tensor(truth_a)))
    assert ours_a == pytest.approx(1 - (d_bg + d_fg) / 2, rel=1e-9)
    assert ours_a == pytest.approx(0.514430, abs=1e-6)  # the worked figure above, from the loss itself
    # B: a 64 x 64 image, true 20 x 20 box, predicted box (p_fg 0.9, else ~0) shifted 10 px right:
    #    overlap 20 x 10 = 200 px: I = 0.9 * 200 = 180, P = 0.9 * 400 = 360, Y = 400
    truth_b = _box(64, 10, 10, 20)[None]
    p_b = np.full((1, 64, 64), 1e-30)
    p_b[0, 10:30, 20:40] = 0.9
    study_b = 1 - 2 * (180 + s) / (360 + 400 + s)  # 0.526316
    assert float(dice_rsna_loss(_prob_map(p_b), torch.as_tensor(truth_b))) == pytest.approx(study_b, rel=1e-9)
    # C: batch-global, not a mean of per-image losses: A and B as one batch of two 64 px images
    truth_c = np.zeros((2, 64, 64), dtype=np.int64)
    truth_c[0, :32, :32] = truth_a[0]
    truth_c[1] = truth_b[0]
    p_c = np.concatenate([np.full((1, 64, 64), 1e-30), p_b])
    p_c[0, :32, :32] = 0.01
    study_c = 1 - 2 * (1 + 180 + s) / (10.24 + 360 + 100 + 400 + s)
    got_c = dice_rsna_loss(_prob_map(p_c), torch.as_tensor(truth_c))
    assert float(got_c) == pytest.approx(study_c, rel=1e-9)
    assert float(got_c) != pytest.approx((study_a + study_b) / 2, rel=1e-3)
    # ... and the same from the per-image statistics summed over a split (validation's path)
    assert float(loss_from_stats("dice_rsna", loss_stats(_prob_map(p_c), torch.as_tensor(truth_c), ce=False).sum(0))) \
        == pytest.approx(study_c, rel=1e-9)
    # D: a batch without foreground (p_fg = 0.01 on 4 x 4): 1 - 2s / (0.16 + s), about 1, flat:
    #    its gradient is O(s), so such a batch teaches almost nothing, as in the study
    x_d = _prob_map(np.full((1, 4, 4), 0.01)).requires_grad_(True)
    loss_d = dice_rsna_loss(x_d, torch.zeros(1, 4, 4, dtype=torch.long))
    assert float(loss_d.detach()) == pytest.approx(1 - 2 * s / (0.16 + s), rel=1e-12)
    loss_d.backward()
    assert float(x_d.grad.abs().max()) < 1e-4
    # E: ignored pixels are skipped; a batch with no valid pixel is 0, not 1 - 2s/s = -1
    t_e = torch.as_tensor(truth_a).clone()
    t_e[0, 20:] = U  # rows 20.. unknown: 640 valid pixels left, the box (rows 5..14) whole
    assert float(dice_rsna_loss(pred_a, t_e)) == pytest.approx(1 - 2 * (1 + s) / (6.40 + 100 + s), rel=1e-9)
    assert float(dice_rsna_loss(pred_a, torch.full((1, 32, 32), U))) == 0.0
    # F: one sigmoid channel is the foreground itself (p = 1/2 on 4 pixels, one foreground)
    z = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    assert float(dice_rsna_loss(z, torch.tensor([[[1, 0], [0, 0]]]))) == pytest.approx(1 - 2 * (0.5 + s) / (2 + 1 + s))
    # G: a named option with its keyword, through the registry
    assert float(build_loss("dice_rsna", smooth=1.0)(pred_a, torch.as_tensor(truth_a))) == pytest.approx(1 - 2 * 2 / 111.24)


def test_dice_ce_and_dice_bce_hand_cases():
    x = _logits_fg(LN3)
    t = torch.tensor([[[1, 1], [0, 0]]])
    ce = (math.log(4 / 3) + math.log(4)) / 2  # two pixels at -ln(3/4), two at -ln(1/4)
    assert float(ce_loss(x, t)) == pytest.approx(ce)
    assert float(dice_ce_loss(x, t)) == pytest.approx(5 / 12 + ce)
    assert float(dice_ce_loss(x, t, dice_weight=2.0, ce_weight=0.5)) == pytest.approx(2 * 5 / 12 + 0.5 * ce)
    # K = 1 sigmoid, logit 0 (p = 1/2) on 4 pixels, one foreground: (1 + 1) / (2 + 1 + 1) = 1/2
    z = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    tb = torch.tensor([[[1, 0], [0, 0]]])
    assert float(dice_loss(z, tb)) == pytest.approx(0.5)
    assert float(dice_bce_loss(z, tb)) == pytest.approx(0.5 + math.log(2))


def test_losses_with_no_valid_pixel_are_finite_with_finite_gradients():
    x = torch.randn(2, 2, 4, 4, requires_grad=True)
    t = torch.full((2, 4, 4), U)
    for name in ("dice", "dice_rsna", "dice_ce", "ce"):
        loss = build_loss(name)(x, t)
        assert torch.isfinite(loss) and float(loss.detach()) == pytest.approx(0.0), name
        loss.backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None


def test_loss_registry_and_errors():
    assert set(LOSSES.names()) >= {"dice", "dice_rsna", "dice_ce", "dice_bce", "ce"}
    from lungray.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown segmentation loss 'dcie'; valid choices"):
        build_loss("dcie")
    with pytest.raises(ConfigError, match="needs one sigmoid channel"):
        dice_bce_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="needs K >= 2"):
        dice_ce_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be"):
        dice_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 3, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# losses: against segmentation-models-pytorch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ignore", [False, True])
def test_dice_loss_agrees_with_smp(ignore):
    """smp's Dice is (2I + 2s') / (sum p + sum y + 2s') (a Tversky form): our smooth s = 2 s'."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 3, (3, 8, 8), generator=g)  # every class present
    if ignore:
        t[0, :2] = U
    ref = smp.losses.DiceLoss("multiclass", from_logits=True, smooth=0.5, ignore_index=U if ignore else None)(x, t)
    assert float(dice_loss(x, t, smooth=1.0)) == pytest.approx(float(ref), rel=1e-6)
    xb = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    tb = torch.randint(0, 2, (3, 8, 8), generator=g)
    if ignore:
        tb[1, :, :3] = U
    refb = smp.losses.DiceLoss("binary", from_logits=True, smooth=0.5, ignore_index=U if ignore else None)(xb, tb.unsqueeze(1))
    assert float(dice_loss(xb, tb)) == pytest.approx(float(refb), rel=1e-6)
