"""Model registry and penultimate features."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from wmdd.data.datasets import get_spec
from wmdd.errors import UserError
from wmdd.models import (
    block_outputs,
    create_model,
    forward_with_features,
    model_names,
    parse_model_kwargs,
    penultimate_features,
)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "convnet", "convnet_in", "vit_tiny"])
@pytest.mark.parametrize("dataset,size", [("cifar10", 32), ("tiny-imagenet", 64)])
def test_models_map_images_to_logits(name, dataset, size):
    spec = get_spec(dataset)
    model = create_model(name, num_classes=7, dataset=spec).eval()
    with torch.no_grad():
        logits, feats = forward_with_features(model, torch.randn(2, 3, size, size))
    assert logits.shape == (2, 7) and feats.ndim == 2 and feats.shape[0] == 2


def test_registry_names():
    assert set(model_names()) == {"resnet18", "resnet50", "resnet101", "convnet", "convnet_in", "vit_tiny"}


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


def test_convnet_in_is_dms_convnet():
    torch.manual_seed(0)
    model = create_model("convnet_in", num_classes=10, dataset="cifar10")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(convs) == 3 and all(c.out_channels == 128 for c in convs)
    assert len(norms) == 3 and all(n.num_groups == n.num_channels == 128 and n.affine for n in norms)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.MaxPool2d)) for m in model.modules())
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 3
    x = torch.randn(4, 3, 32, 32)
    logits, feats = forward_with_features(model, x)
    assert logits.shape == (4, 10) and feats.shape == (4, 2048)
    assert torch.equal(penultimate_features(model, x), feats)
    assert parse_model_kwargs("convnet_in", ["depth=2", "width=64"]) == {"depth": 2, "width": 64}
    small = create_model("convnet_in", num_classes=10, dataset="cifar10", depth=2, width=64)
    assert penultimate_features(small, x).shape == (4, 64 * 8 * 8)
    assert len([m for m in create_model("convnet_in", num_classes=10, dataset="tiny-imagenet").modules()
                if isinstance(m, nn.GroupNorm)]) == 4
    with pytest.raises(UserError, match="convnet_in takes depth=<int>, width=<int>"):
        parse_model_kwargs("convnet_in", ["norm=batch"])
    with pytest.raises(UserError, match="model 'convnet_in' takes no option 'norm'"):
        create_model("convnet_in", num_classes=10, dataset="cifar10", norm="batch")


def test_block_outputs_of_convnet_in():
    torch.manual_seed(0)
    model = create_model("convnet_in", num_classes=10, dataset="cifar10")
    x = torch.randn(5, 3, 32, 32, requires_grad=True)
    post, emb = block_outputs(model, x)
    pre, emb_pre = block_outputs(model, x, where="pre_norm")
    assert [tuple(m.shape) for m in post] == [tuple(m.shape) for m in pre] == \
        [(5, 128, 32, 32), (5, 128, 16, 16), (5, 128, 8, 8)]
    with torch.no_grad():
        assert torch.allclose(emb, penultimate_features(model, x), atol=1e-6) and torch.equal(emb, emb_pre)
        assert torch.allclose(model.classifier(emb), model(x), atol=1e-5)
        # direct recomputation: conv output, then the norm, ReLU, pool of each block
        h = x
        for k in range(3):
            conv, norm, _, pool = model.features[4 * k:4 * k + 4]
            assert torch.allclose(pre[k], conv(h), atol=1e-5)
            assert torch.allclose(post[k], norm(pre[k]), atol=1e-5)
            h = pool(torch.relu(post[k]))
    for k in range(3):
        assert not torch.allclose(pre[k], post[k], atol=1e-2)
        # instance norm at init (weight 1, bias 0): per-image channel moments 0 and 1 (pre-norm: not)
        mean, var = post[k].mean(dim=(2, 3)), post[k].var(dim=(2, 3), unbiased=False)
        assert mean.abs().max() < 1e-4 and (var - 1).abs().max() < 1e-2
        assert pre[k].mean(dim=(2, 3)).abs().max() > 1e-2
        assert (post[k] < 0).any()  # recorded before the ReLU
    sum(m.square().mean() for m in post).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_block_outputs_errors():
    with pytest.raises(UserError, match="needs a ConvNet"):
        block_outputs(create_model("resnet18", num_classes=10, dataset="cifar10"), torch.randn(1, 3, 32, 32))
    with pytest.raises(UserError, match="post_norm or pre_norm, got 'post_relu'"):
        block_outputs(create_model("convnet_in", num_classes=10, dataset="cifar10"), torch.randn(1, 3, 32, 32),
                      where="post_relu")
