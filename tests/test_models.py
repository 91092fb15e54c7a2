"""Model registry and penultimate features."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from common.datasets import get_spec
from common.errors import UserError
from models import create_model, forward_with_features, model_names, parse_model_kwargs, penultimate_features


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "convnet", "vit_tiny"])
@pytest.mark.parametrize("dataset,size", [("cifar10", 32), ("tiny-imagenet", 64)])
def test_models_map_images_to_logits(name, dataset, size):
    spec = get_spec(dataset)
    model = create_model(name, num_classes=7, dataset=spec).eval()
    with torch.no_grad():
        logits, feats = forward_with_features(model, torch.randn(2, 3, size, size))
    assert logits.shape == (2, 7) and feats.ndim == 2 and feats.shape[0] == 2


def test_registry_names():
    assert set(model_names()) == {"resnet18", "resnet50", "resnet101", "convnet", "vit_tiny"}


def test_small_and_imagenet_stems():
    small = create_model("resnet18", num_classes=10, dataset="cifar10")
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    big = create_model("resnet18", num_classes=10, dataset="imagenette")
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    # the stem follows the actual input size when it differs from the native one
    reduced = create_model("resnet18", num_classes=10, dataset="imagenette", input_size=64)
    assert reduced.conv1.kernel_size == (3, 3)


def test_penultimate_features_equal_manual_computation():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    r = create_model("resnet18", num_classes=10, dataset="cifar10").eval()
    with torch.no_grad():
        body = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4, r.avgpool)
        assert torch.allclose(penultimate_features(r, x), torch.flatten(body(x), 1), atol=1e-6)
        c = create_model("convnet", num_classes=10, dataset="cifar10", width=16).eval()
        feats = penultimate_features(c, x)
        assert feats.shape == (3, 16 * 4 * 4)
        assert torch.allclose(feats, torch.flatten(c.features(x), 1))
        assert torch.allclose(c.classifier(feats), c(x), atol=1e-6)


def test_features_carry_gradients():
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    model = create_model("convnet", num_classes=10, dataset="cifar10", width=8)
    penultimate_features(model, x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_convnet_options_and_errors():
    assert parse_model_kwargs("convnet", ["depth=2", "width=32", "norm=instance"]) == \
        {"depth": 2, "width": 32, "norm": "instance"}
    m = create_model("convnet", num_classes=4, dataset="cifar10", depth=2, width=32, norm="instance")
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    with pytest.raises(UserError, match="convnet takes depth=<int>"):
        parse_model_kwargs("convnet", ["depht=2"])
    with pytest.raises(UserError, match="resnet18 takes no options"):
        parse_model_kwargs("resnet18", ["width=2"])
    with pytest.raises(UserError, match="norm 'layer'"):
        create_model("convnet", num_classes=4, dataset="cifar10", norm="layer")
    with pytest.raises(UserError, match="unknown model 'resnet19'"):
        create_model("resnet19", num_classes=4, dataset="cifar10")
