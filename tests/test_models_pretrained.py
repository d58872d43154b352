"""Pretrained weights from a local file or folder (air-gapped clusters): files the test writes.

No hub is reachable here, so ``pretrained: true`` is not exercised; every local path is.
"""

from __future__ import annotations

import pytest
import torch

from lungray.config import ModelConfig
from lungray.errors import ConfigError
from lungray.models import check_model_config, create_model


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    import timm

    torch.manual_seed(1)
    full = timm.create_model("resnet18", num_classes=10)  # random init, with its fc classifier
    sd = full.state_dict()
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(sd, path)
    return path, sd


def _assert_trunk_equals(model, sd, skip=()):
    own = model.backbone.body.state_dict()
    assert set(own) == {k for k in sd if not k.startswith("fc.")}
    for k, v in own.items():
        if k in skip:
            continue
        assert torch.equal(v, sd[k]), k


def test_state_dict_file_loads_into_the_backbone_with_the_head_dropped(resnet18_file):
    path, sd = resnet18_file
    cfg = ModelConfig(name="resnet18", pretrained=str(path))
    check_model_config(cfg)
    model = create_model(cfg, 3, in_chans=3, resolution=32)
    _assert_trunk_equals(model, sd)
    assert model.head.fc.out_features == 3  # new head, not the file's 10-class fc


def test_grayscale_folds_rgb_filters_by_summing(resnet18_file):
    path, sd = resnet18_file
    model = create_model(ModelConfig(name="resnet18", pretrained=str(path)), 2, in_chans=1, resolution=32)
    w = model.backbone.body.conv1.weight
    assert w.shape == (64, 1, 7, 7)
    assert torch.allclose(w, sd["conv1.weight"].sum(dim=1, keepdim=True))
    _assert_trunk_equals(model, sd, skip={"conv1.weight"})


def test_safetensors_file_and_hf_style_folder(resnet18_file, tmp_path):
    from safetensors.torch import save_file

    _, sd = resnet18_file
    folder = tmp_path / "resnet18-hf"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    for where in (folder / "model.safetensors", folder):
        model = create_model(ModelConfig(name="resnet18", pretrained=str(where)), 2, in_chans=3, resolution=32)
        _assert_trunk_equals(model, sd)


def test_wrapped_checkpoint_with_module_prefix(resnet18_file, tmp_path):
    _, sd = resnet18_file
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = create_model(ModelConfig(name="resnet18", pretrained=str(path)), 2, in_chans=3, resolution=32)
    _assert_trunk_equals(model, sd)


def test_a_file_for_another_architecture_is_named_in_the_error(resnet18_file, tmp_path):
    _, sd = resnet18_file
    bad = dict(sd)
    bad["layer5.0.conv1.weight"] = bad.pop("layer4.1.conv2.weight")
    path = tmp_path / "not-resnet18.pth"
    torch.save(bad, path)
    with pytest.raises(ConfigError) as e:
        create_model(ModelConfig(name="resnet18", pretrained=str(path)), 2, resolution=32)
    msg = str(e.value)
    assert str(path) in msg and "does not fit the resnet18 backbone" in msg
    assert "1 missing (e.g. layer4.1.conv2.weight)" in msg and "1 unexpected (e.g. layer5.0.conv1.weight)" in msg


def test_a_pickle_that_is_not_weights_is_refused(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"model": ModelConfig(name="resnet18")}, path)  # a pickled object, not tensors
    with pytest.raises(ConfigError, match=r"cannot read weights file .*object.pt|does not hold a state dict"):
        create_model(ModelConfig(name="resnet18", pretrained=str(path)), 2, resolution=32)


def test_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"")
    (tmp_path / "b.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"folder .* holds a.pth, b.pth; put exactly one weights file there"):
        create_model(ModelConfig(name="resnet18", pretrained=str(tmp_path)), 2, resolution=32)


def test_torchvision_trunk_from_a_file(tmp_path):
    import torchvision

    torch.manual_seed(2)
    tv = torchvision.models.get_model("squeezenet1_1", weights=None)
    sd = tv.state_dict()
    path = tmp_path / "squeezenet.pth"
    torch.save(sd, path)
    model = create_model(ModelConfig(name="tv:squeezenet1_1", pretrained=str(path)), 2, in_chans=1, resolution=64)
    own = model.backbone.body.state_dict()
    assert set(own) == {k for k in sd if k.startswith("features.")}
    assert torch.allclose(own["features.0.weight"], sd["features.0.weight"].sum(1, keepdim=True))
    for k in own:
        if k != "features.0.weight":
            assert torch.equal(own[k], sd[k]), k


def test_a_lungray_checkpoint_seeds_a_new_model(tmp_path):
    torch.manual_seed(3)
    first = create_model(ModelConfig(name="simple_cnn", width=4), 2, resolution=32)
    path = tmp_path / "best.pt"
    torch.save({"model": first.state_dict(), "class_names": ["a", "b"], "epoch": 1}, path)
    second = create_model(ModelConfig(name="simple_cnn", width=4, pretrained=str(path)), 4, resolution=32)
    for k, v in first.backbone.body.state_dict().items():
        assert torch.equal(second.backbone.body.state_dict()[k], v), k
    assert second.head.fc.out_features == 4
