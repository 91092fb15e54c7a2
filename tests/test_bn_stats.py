"""Per-class BatchNorm statistics against a brute-force computation on real CIFAR-10 images."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from wmdd.data.datasets import get_spec
from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import eval_transform
from wmdd.models import create_model
from wmdd.models.bn_stats import BNInputCapture, batchnorm_layers, compute_bn_statistics
from wmdd.runtime.distributed import DistContext

CPU = DistContext(0, 1, 0, torch.device("cpu"))


def _real_batches(cifar_root, batch_size=16):
    spec = get_spec("cifar10")
    ds = image_folder(split_dir(cifar_root, "train"), eval_transform(spec, 32), per_class=4, seed=1)
    return list(DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)))


def _trained_like(model):
    """Give BN layers non-trivial running statistics and affine parameters."""
    torch.manual_seed(0)
    for _, bn in batchnorm_layers(model):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _brute_force(model, batches):
    """Concatenate every BN input of every image, then compute per-class mean/var directly."""
    captured: dict[str, list] = {}
    with BNInputCapture(model, lambda name, x: captured.setdefault(name, []).append(x.double())), torch.no_grad():
        for x, _ in batches:
            model(x)
    labels = torch.cat([y for _, y in batches])
    return {name: torch.cat(xs) for name, xs in captured.items()}, labels


def test_per_class_statistics_equal_brute_force_on_real_images(cifar_root):
    torch.manual_seed(0)
    model = _trained_like(create_model("resnet18", num_classes=10, dataset="cifar10"))
    batches = _real_batches(cifar_root)
    stats = compute_bn_statistics(model, batches, 10, CPU)
    acts, labels = _brute_force(model, batches)
    assert stats["layers"] == [n for n, _ in batchnorm_layers(model)] and len(stats["layers"]) == 20
    assert stats["images_per_class"].tolist() == [4] * 10
    worst = 0.0
    for name, x in acts.items():
        for c in range(10):
            xc = x[labels == c].transpose(0, 1).reshape(x.shape[1], -1)  # [C, images * pixels]
            mean, var = xc.mean(1), xc.var(1, unbiased=False)
            for ours, ref in ((stats["per_class_mean"][name][c], mean), (stats["per_class_var"][name][c], var)):
                rel = ((ours - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()
                worst = max(worst, rel)
        xa = x.transpose(0, 1).reshape(x.shape[1], -1)
        assert torch.allclose(stats["global_mean"][name], xa.mean(1), rtol=1e-9, atol=1e-12)
        assert torch.allclose(stats["global_var"][name], xa.var(1, unbiased=False), rtol=1e-9, atol=1e-12)
    assert worst < 1e-6, worst


def test_global_statistics_are_the_class_weighted_combination(cifar_root):
    model = _trained_like(create_model("resnet18", num_classes=10, dataset="cifar10"))
    batches = _real_batches(cifar_root)[:-1]  # unequal class counts
    stats = compute_bn_statistics(model, batches, 10, CPU)
    n = stats["images_per_class"].double()
    assert len(set(n.tolist())) > 1
    w = (n / n.sum()).unsqueeze(1)
    for name in stats["layers"]:
        mu_c, var_c = stats["per_class_mean"][name], stats["per_class_var"][name]
        mu = (w * mu_c).sum(0)
        var = (w * (var_c + mu_c.square())).sum(0) - mu.square()
        assert torch.allclose(stats["global_mean"][name], mu, rtol=1e-9, atol=1e-12)
        assert torch.allclose(stats["global_var"][name], var, rtol=1e-7, atol=1e-10)


def test_statistics_are_independent_of_batching(cifar_root):
    model = _trained_like(create_model("convnet", num_classes=10, dataset="cifar10", width=16))
    a = compute_bn_statistics(model, _real_batches(cifar_root, 16), 10, CPU)
    b = compute_bn_statistics(model, _real_batches(cifar_root, 7), 10, CPU)
    for name in a["layers"]:
        assert torch.allclose(a["per_class_var"][name], b["per_class_var"][name], rtol=1e-9, atol=1e-12)


def test_hooks_work_on_a_timm_model(cifar_root):
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    stats = compute_bn_statistics(model, _real_batches(cifar_root)[:2], 10, CPU)
    assert len(stats["layers"]) == len(batchnorm_layers(model)) > 5
    assert not any(batchnorm_layers(model)[0][1]._forward_pre_hooks)  # hooks removed afterwards
