"""Grad-CAM on frozen trunks and the studies' target layers (issue 12).

Every freeze policy x backbone family gets a heat map (a frozen backbone used to fail: no
parameter before the target layer required gradients, so pytorch-grad-cam recorded none); the
map does not depend on which weights are trainable; ``gradcam_layer: last_conv`` resolves to
the layers the studies named; a report part that fails is a red box and a non-zero outcome.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungray.config import ModelConfig
from lungray.errors import ConfigError
from lungray.models import FREEZE_POLICIES, create_model, gradcam_target, input_channels
from lungray.models.freeze import apply_freeze
from lungray.report.gradcam import compute_cams, layer_names

slow = pytest.mark.slow

# one model per backbone family, at the smallest resolution that leaves a 2x2+ feature map
FAMILIES = [
    pytest.param("resnet18", 64, {}, id="resnet18"),  # resnet
    pytest.param("tv:resnet18", 64, {}, id="tv:resnet18", marks=slow),  # resnet (torchvision trunk)
    pytest.param("densenet121", 64, {}, id="densenet121", marks=slow),  # densenet
    pytest.param("vgg11_bn", 64, {}, id="vgg11_bn"),  # vgg
    pytest.param("tv:alexnet", 64, {"head": "tv_classifier"}, id="tv:alexnet"),  # alexnet, classifier kept
    pytest.param("efficientnet_b0", 64, {}, id="efficientnet_b0", marks=slow),  # efficientnet
    pytest.param("convnext_atto", 64, {}, id="convnext_atto", marks=slow),  # convnext
    pytest.param("vit_tiny_patch16_224", 64, {}, id="vit", marks=slow),  # vit
    pytest.param("simple_cnn", 32, {"width": 8}, id="simple_cnn"),  # lungray's own
    pytest.param("ae_encoder", 256, {}, id="ae_encoder", marks=slow),  # encoder -> densenet (2x2 map at 256 px)
    pytest.param("logreg", 32, {}, id="logreg"),  # no backbone stages
]
POLICIES = ["none", "backbone", "fc_only", "last:1"]


def test_the_policies_tested_are_every_registered_policy():
    assert sorted(p.split(":")[0] for p in POLICIES) == FREEZE_POLICIES.names()


@pytest.mark.parametrize("name, res, extra", FAMILIES)
def test_every_freeze_policy_gets_the_same_heat_map(name, res, extra):
    """The map is computed from the target layer's activations and gradients, which do not
    depend on requires_grad: every policy must give the map of the fully trainable model."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name, **extra), 3, resolution=res).eval()
    # two images x three target classes: a random head leaves some maps all-zero (ReLU), not all
    x = torch.randn(2, 1, res, res, generator=torch.Generator().manual_seed(1)).repeat_interleave(3, 0)
    targets = [0, 1, 2, 0, 1, 2]
    ref = compute_cams(model, x, targets)
    assert ref.shape == (6, res, res) and np.isfinite(ref).all()
    assert (ref.reshape(6, -1).max(1) > 0.5).sum() >= 2
    for policy in POLICIES:
        if policy == "last:1" and name == "logreg":
            with pytest.raises(ConfigError, match="no backbone stages"):
                apply_freeze(model, policy)
            continue
        apply_freeze(model, policy)
        model.eval()
        if policy != "none":
            assert any(not p.requires_grad for p in model.backbone.parameters()) or name == "logreg"
        cams = compute_cams(model, x, targets)
        np.testing.assert_allclose(cams, ref, atol=1e-5, err_msg=f"{name} with freeze {policy}")
        assert all(p.grad is None for p in model.parameters())  # nothing left behind for a later step


@pytest.mark.parametrize("name, res, extra", FAMILIES)
def test_the_graph_cut_at_the_target_layer_gives_the_full_graphs_maps(name, res, extra):
    """Issue 22.4: cam_pass records autograd only from the target layer on (no backward through
    the trunk, no parameter gradient). Its maps must be those of pytorch-grad-cam run the
    textbook way, through the whole graph; the parameters' flags come back as they were."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from lungray.report.gradcam import cam_pass, no_inplace

    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name, **extra), 3, resolution=res).eval()
    if name != "logreg":
        apply_freeze(model, "last:1")  # a mix of frozen and trainable parameters
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(2, 1, res, res, generator=torch.Generator().manual_seed(1)).repeat_interleave(3, 0)
    targets = [0, 1, 2, 0, 1, 2]
    got = cam_pass(model, x, targets)
    assert [p.requires_grad for p in model.parameters()] == flags
    layers, reshape = gradcam_target(model)
    with no_inplace(model), GradCAM(model=model, target_layers=layers, reshape_transform=reshape) as cam, torch.enable_grad():
        ref = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(t) for t in targets])
        ref_logits = cam.outputs.detach().numpy()
    model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(got.maps, ref, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got.logits, ref_logits, atol=1e-5, err_msg=name)
    assert (ref.reshape(6, -1).max(1) > 0.5).sum() >= 2  # real maps, not all zeros


def test_plain_pytorch_grad_cam_records_no_gradient_on_a_frozen_trunk():
    """The defect compute_cams fixes: with the trunk frozen and a plain input, pytorch-grad-cam
    never sees a gradient at the target layer and fails."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    # (the layer4 block: at random init timm zeroes the last batch norm of each block, so the
    # last conv's gradient is exactly 0 until the model is trained)
    model = create_model(ModelConfig(name="resnet18", freeze="backbone"), 2, resolution=64).eval()
    layers, _ = gradcam_target(model)
    with pytest.raises((AttributeError, IndexError)), GradCAM(model=model, target_layers=layers) as cam:
        cam(input_tensor=torch.randn(1, 1, 64, 64), targets=[ClassifierOutputTarget(0)])
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)).repeat_interleave(2, 0)
    cams = compute_cams(model, x, [0, 1, 0, 1])  # the fix: the same model, no error, real maps
    assert np.isfinite(cams).all() and cams.max() > 0.5


@pytest.mark.parametrize(
    "name, res, classes, path",
    [
        ("resnet50", 64, 2, "backbone.body.layer4.2.conv3"),  # Keras conv5_block3_3_conv (study 2)
        ("densenet121", 64, 2, "backbone.body.features.denseblock4.denselayer16.conv2"),  # conv5_block16_2_conv
        ("tv:alexnet", 64, 4, "backbone.body.features.10"),  # "layer 5" (study 4)
        ("tv:vgg19_bn", 64, 4, "backbone.body.features.49"),  # "layer 16" (study 4)
        ("vgg16", 64, 2, "backbone.body.features.28"),  # Keras block5_conv3 (study 2)
    ],
)
def test_last_conv_is_the_studies_layer(name, res, classes, path):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, gradcam_layer="last_conv", input_mode="repeat3")
    model = create_model(cfg, classes, in_chans=input_channels(cfg), resolution=res)
    layers, reshape = gradcam_target(model)
    assert layer_names(model, layers) == [path] and reshape is None
    assert isinstance(layers[0], torch.nn.Conv2d)
    # the family default stays available and differs (ResNet: the block; VGG: the ReLU after the conv)
    assert layer_names(model, gradcam_target(model, "auto")[0]) != [path]


def test_a_module_path_and_bad_choices():
    model = create_model(ModelConfig(name="resnet18", gradcam_layer="backbone.body.layer3.1.conv2"), 2, resolution=64)
    assert layer_names(model, gradcam_target(model)[0]) == ["backbone.body.layer3.1.conv2"]
    with pytest.raises(ConfigError, match=r"gradcam_layer 'backbone.body.layer9' is not a module of resnet18; .*layer4.1.conv2"):
        create_model(ModelConfig(name="resnet18", gradcam_layer="backbone.body.layer9"), 2, resolution=64)
    with pytest.raises(ConfigError, match="patch embedding"):
        create_model(ModelConfig(name="vit_tiny_patch16_224", gradcam_layer="last_conv"), 2, resolution=32)
    with pytest.raises(ConfigError, match="has no convolution"):
        create_model(ModelConfig(name="logreg", gradcam_layer="last_conv"), 2, resolution=32)


def test_in_place_activation_after_the_target_does_not_overwrite_its_output():
    """AlexNet's conv5 is followed by ReLU(inplace=True): the activation used must be the conv's
    own output (negative values included), as if the ReLU were not in place."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="tv:alexnet", gradcam_layer="last_conv"), 2, resolution=64).eval()
    relu = model.backbone.body.features[11]
    assert relu.inplace
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    ours = compute_cams(model, x, [0, 1])
    assert relu.inplace  # restored
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    reference = compute_cams(model, x, [0, 1])
    np.testing.assert_allclose(ours, reference, atol=1e-6)


# -------------------------------------------------------------------------- the report's red box


def test_a_failed_panel_is_a_red_box_and_a_non_zero_outcome(prepared_phantom, tmp_path):
    """A frozen ResNet gets its panel (its last conv named in the report); a checkpoint that
    cannot be rebuilt is a visible FAILED box, the report is still written, build_report raises
    ReportIncomplete and the sweep's report step returns a one-line failure (exit 1)."""
    from lungray.config import OptimizerConfig, TrialConfig
    from lungray.report import build_report
    from lungray.report._testing import log_fake_sweep
    from lungray.report.build import ReportIncomplete
    from lungray.sweep.runner import SweepResult, _build_report
    from lungray.train.checkpoint import write_best

    data = prepared_phantom
    ev = np.asarray(data.eval_idx)
    frozen = ModelConfig(name="resnet18", freeze="backbone", gradcam_layer="last_conv")
    torch.manual_seed(0)
    net = create_model(frozen, 2, resolution=data.resolution)

    def ckpt(t, run_dir):
        model = frozen if t.model.key == "frozen" else ModelConfig(name="simple_cnn", width=8)
        trial = TrialConfig(study="t", model=model, train_size=t.train_size, optimizer=OptimizerConfig(), seed=0)
        # "broken": a simple_cnn trial whose file holds ResNet weights: it cannot be rebuilt
        return write_best(run_dir / "best.pt", model_state=net.state_dict(), class_names=list(data.class_names),
                          trial=trial.to_dict(), norm=(0.5, 0.25), epoch=1)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fk = log_fake_sweep(uri, "red", models=("frozen", "broken"), sizes=(40,), seeds=(0,), class_names=data.class_names,
                        eval_image_ids=np.asarray(data.ids)[ev], eval_labels=data.labels[ev], data_root=data.root,
                        checkpoint_fn=ckpt, identical={}, artifact_root=(tmp_path / "art").as_uri(), resolution=data.resolution)
    out = tmp_path / "report"
    with pytest.raises(ReportIncomplete, match=r"has 1 failed part\(s\): Grad-CAM panels: broken: no Grad-CAM panel \(") as e:
        build_report(uri, "red", out_dir=out, n_boot=50, device="cpu")
    assert e.value.path == out / "report.html" and len(str(e.value).splitlines()) == 1
    html = (out / "report.html").read_text()
    assert html.count('<div class="error">FAILED: broken: no Grad-CAM panel') == 1
    gradcam = html[html.index('id="gradcam"'):html.index('id="pointing"')]
    assert len(gradcam.split('<img src="data:image/png;base64,')[1].split('"')[0]) > 5_000  # the frozen model's panel
    assert "backbone.body.layer4.1.conv2" in html and "last_conv" in html
    # issue 20.4: a ResNet's last conv at 32 px is one cell: said next to the panel and the pointing score
    assert "1×1 (32 px per cell)" in gradcam and "frozen: its target layer&#x27;s map is only 1×1 cells for a 32 px input" in gradcam
    pointing = html[html.index('id="pointing"'):]
    assert "cannot localise a lesion" in pointing

    lines: list[str] = []
    path, failure = _build_report(uri, "red", fk.parent_id, tmp_path / "exp", True, lines.append)
    assert path == tmp_path / "exp" / "report" / "report.html" and path.exists()
    assert failure and failure.startswith("report ") and lines[-1] == f"error: {failure}"
    assert not SweepResult(experiment_dir=tmp_path, config=None, report_error=failure).ok
