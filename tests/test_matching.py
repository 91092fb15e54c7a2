"""DM / Decomposed-DM losses (wmdd/recover/matching.py) against brute-force computations
on real CIFAR-10 images through a randomly initialised convnet_in."""

from __future__ import annotations

import pytest
import torch

from wmdd.data.datasets import get_spec
from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import eval_transform
from wmdd.models import create_model
from wmdd.models.convnet import block_outputs
from wmdd.recover.dsa import DSAParams, siamese
from wmdd.recover.matching import (
    class_gram,
    class_moments,
    correlation_loss,
    icd_loss,
    icd_neighbours,
    mean_embedding_loss,
    moments_loss,
)


@pytest.fixture(scope="module")
def real(cifar_root):
    """8 real train images each of classes 3 and 5 (normalised [16, 3, 32, 32]) and a random convnet_in."""
    ds = image_folder(split_dir(cifar_root, "train"), eval_transform(get_spec("cifar10"), 32))
    idx = [i for i, t in enumerate(ds.targets) if t == 3][:8] + [i for i, t in enumerate(ds.targets) if t == 5][:8]
    torch.manual_seed(0)
    net = create_model("convnet_in", num_classes=10, dataset="cifar10").requires_grad_(False)
    return torch.stack([ds[i][0] for i in idx]), net


def test_dm_loss_of_two_classes_equals_brute_force(real):
    images, net = real
    generator = torch.Generator().manual_seed(1)
    syn = images[[0, 1, 8, 9]].flip(-1).clone()
    total = torch.zeros(())
    brute = 0.0
    for c, (r, s) in enumerate(((images[:8], syn[:2]), (images[8:], syn[2:]))):
        r_aug, s_aug = siamese(r, s, DSAParams(), generator)
        e_r = net.classifier.register_forward_pre_hook(lambda m, i: captured.append(i[0]))
        captured = []
        net(r_aug)
        net(s_aug)
        e_r.remove()
        real_emb, syn_emb = captured
        total = total + mean_embedding_loss(real_emb, syn_emb)
        d = real_emb.double().sum(0) / len(real_emb) - syn_emb.double().sum(0) / len(syn_emb)
        brute += sum(float(v) ** 2 for v in d)
    assert abs(float(total) - brute) < 1e-4 * brute and brute > 0


def test_moments_and_gram_equal_direct_computations_from_captured_maps(real):
    images, net = real
    maps, _ = block_outputs(net, images, "pre_norm")
    for m in maps:
        mean, std = class_moments(m)
        x = m.double()
        n, c, h, w = x.shape
        mu = torch.stack([torch.stack([x[i, k].mean() for k in range(c)]) for i in range(n)])
        sd = torch.stack([torch.stack([((x[i, k] - x[i, k].mean()) ** 2).mean().add(1e-5).sqrt()
                                       for k in range(c)]) for i in range(n)])
        torch.testing.assert_close(mean.double(), mu.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(std.double(), sd.mean(0), rtol=1e-4, atol=1e-5)
        grams = [x[i].reshape(c, h * w) @ x[i].reshape(c, h * w).T / (c * h * w) for i in range(n)]
        torch.testing.assert_close(class_gram(m).double(), torch.stack(grams).mean(0), rtol=1e-4, atol=1e-6)
    syn = [m[:3] for m in maps]
    real_stats = [class_moments(m[8:]) for m in maps]
    expect = sum(float(((a - class_moments(s)[0]) ** 2).sum() + ((b - class_moments(s)[1]) ** 2).sum())
                 for (a, b), s in zip(real_stats, syn)) / len(maps)
    assert abs(float(moments_loss(real_stats, syn)) - expect) < 1e-5 * expect
    real_grams = [class_gram(m[8:]) for m in maps]
    expect = sum(float(((g - class_gram(s)) ** 2).sum()) for g, s in zip(real_grams, syn)) / len(maps)
    assert abs(float(correlation_loss(real_grams, syn)) - expect) < 1e-5 * expect


def test_post_norm_moments_carry_no_signal_at_initialisation(real):
    """Why --style-features matters: instance norm fixes each map's moments at init."""
    images, net = real
    post, _ = block_outputs(net, images, "post_norm")
    pre, _ = block_outputs(net, images, "pre_norm")
    mm = lambda maps: float(moments_loss([class_moments(m[:8]) for m in maps], [m[8:] for m in maps]))  # noqa: E731
    assert mm(post) < 1e-4 < mm(pre)


def test_icd_alone_spreads_the_synthetic_embeddings_of_a_class(real):
    images, net = real
    x = images[:5].clone().requires_grad_(True)
    embed = lambda v: block_outputs(net, v)[1]  # noqa: E731
    spread = lambda e: float(torch.pdist(e).mean())  # noqa: E731
    before = spread(embed(x).detach())
    optimizer = torch.optim.SGD([x], lr=100.0)  # the softmax over 2,048 values gives small gradients
    for _ in range(20):
        loss = icd_loss(embed(x), icd_neighbours(5))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert spread(embed(x).detach()) > 1.05 * before


def test_icd_neighbourhood_and_bad_k():
    assert [icd_neighbours(n) for n in (1, 2, 5, 10, 50)] == [0, 1, 1, 2, 10]
    with pytest.raises(ValueError, match="1 <= k < n"):
        icd_loss(torch.randn(3, 8), 3)


def test_moments_and_gram_gradients_equal_the_direct_formulas(real):
    """The fused moments (E[x^2] - E[x]^2) and the batched Gram give the pixel
    gradients of the textbook formulas, computed in float64."""
    images, net = real
    maps, _ = block_outputs(net, images[:4], "pre_norm")
    for m in maps:
        m = m.detach().requires_grad_(True)
        mean, std = class_moments(m)
        (mean.square().sum() + std.sum() + class_gram(m).square().sum()).backward()
        x = m.detach().double().requires_grad_(True)
        n, c, h, w = x.shape
        mu = x.mean(dim=(2, 3))
        sd = ((x - mu[..., None, None]) ** 2).mean(dim=(2, 3)).add(1e-5).sqrt()
        flat = x.reshape(n, c, h * w)
        gram = torch.stack([f @ f.T for f in flat]).mean(0) / (c * h * w)
        (mu.mean(0).square().sum() + sd.mean(0).sum() + gram.square().sum()).backward()
        torch.testing.assert_close(m.grad.double(), x.grad, rtol=1e-3, atol=1e-7)
