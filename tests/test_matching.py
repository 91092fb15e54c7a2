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
from wmdd.recover.dsa import DSAParams, siamese_per_class
from wmdd.recover.grouping import class_mean
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


def _embed(net, x):
    captured = []
    hook = net.classifier.register_forward_pre_hook(lambda m, i: captured.append(i[0]))
    net(x)
    hook.remove()
    return captured[0]


def test_dm_loss_of_two_classes_equals_brute_force(real):
    """Classes of unequal size (8 and 5 real, 2 synthetic each) under one draw per class."""
    images, net = real
    real_images, sizes = torch.cat([images[:8], images[8:13]]), [8, 5]
    syn = images[[0, 1, 8, 9]].flip(-1).clone()
    generator = torch.Generator().manual_seed(1)
    real_aug, syn_aug = siamese_per_class(real_images, sizes, syn, [2, 2], DSAParams(), generator)
    real_emb, syn_emb = _embed(net, real_aug), _embed(net, syn_aug)
    total = mean_embedding_loss(class_mean(real_emb, sizes), class_mean(syn_emb, [2, 2]))
    brute = 0.0
    for r, s in ((real_emb[:8], syn_emb[:2]), (real_emb[8:], syn_emb[2:])):
        d = r.double().sum(0) / len(r) - s.double().sum(0) / len(s)
        brute += sum(float(v) ** 2 for v in d)
    assert abs(float(total) - brute) < 1e-4 * brute and brute > 0


def test_moments_and_gram_equal_direct_computations_from_captured_maps(real):
    """Per-class statistics of two classes of unequal size (9 and 7 images) against loops in float64."""
    images, net = real
    maps, _ = block_outputs(net, images, "pre_norm")
    sizes = [9, 7]
    for m in maps:
        mean, std = class_moments(m, sizes)
        grams = class_gram(m, sizes)
        x = m.double()
        n, c, h, w = x.shape
        mu = torch.stack([torch.stack([x[i, k].mean() for k in range(c)]) for i in range(n)])
        sd = torch.stack([torch.stack([((x[i, k] - x[i, k].mean()) ** 2).mean().add(1e-5).sqrt()
                                       for k in range(c)]) for i in range(n)])
        per_image = [x[i].reshape(c, h * w) @ x[i].reshape(c, h * w).T / (c * h * w) for i in range(n)]
        for j, rows in enumerate((slice(0, 9), slice(9, 16))):
            torch.testing.assert_close(mean[j].double(), mu[rows].mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(std[j].double(), sd[rows].mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(grams[j].double(), torch.stack(per_image[rows]).mean(0), rtol=1e-4, atol=1e-6)
    syn = [class_moments(m[:6], [3, 3]) for m in maps]
    real_stats = [class_moments(m, sizes) for m in maps]
    expect = sum(float(((a - sa) ** 2).sum() + ((b - sb) ** 2).sum())
                 for (a, b), (sa, sb) in zip(real_stats, syn)) / len(maps)
    assert abs(float(moments_loss(real_stats, syn)) - expect) < 1e-5 * expect
    real_grams = [class_gram(m, sizes) for m in maps]
    syn_grams = [class_gram(m[:6], [3, 3]) for m in maps]
    expect = sum(float(((g - s) ** 2).sum()) for g, s in zip(real_grams, syn_grams)) / len(maps)
    assert abs(float(correlation_loss(real_grams, syn_grams)) - expect) < 1e-5 * expect


def test_icd_of_a_batch_is_the_sum_of_its_classes_brute_force(real):
    """ICD of 2 classes x 5 embeddings at k = 2 against a per-image loop in float64."""
    images, net = real
    emb = _embed(net, images[:10]).view(2, 5, -1)
    brute = 0.0
    for e in emb.double():
        kl = []
        for i in range(5):
            d = torch.stack([(e[i] - e[j]).norm() if j != i else torch.tensor(float("inf"), dtype=e.dtype)
                             for j in range(5)])
            centre = e[d.argsort()[:2]].mean(0)
            p, q = torch.softmax(e[i], 0), torch.softmax(centre, 0)
            kl.append(float((p * (p.log() - q.log())).sum()))
        brute -= sum(kl) / 5
    assert abs(float(icd_loss(emb, 2)) - brute) < 1e-4 * abs(brute) and brute < 0


def test_post_norm_moments_carry_no_signal_at_initialisation(real):
    """Why --style-features matters: instance norm fixes each map's moments at init."""
    images, net = real
    post, _ = block_outputs(net, images, "post_norm")
    pre, _ = block_outputs(net, images, "pre_norm")
    mm = lambda maps: float(moments_loss([class_moments(m[:8], [8]) for m in maps],  # noqa: E731
                                         [class_moments(m[8:], [8]) for m in maps]))
    assert mm(post) < 1e-4 < mm(pre)


def test_icd_alone_spreads_the_synthetic_embeddings_of_a_class(real):
    images, net = real
    x = images[:5].clone().requires_grad_(True)
    embed = lambda v: block_outputs(net, v)[1]  # noqa: E731
    spread = lambda e: float(torch.pdist(e).mean())  # noqa: E731
    before = spread(embed(x).detach())
    optimizer = torch.optim.SGD([x], lr=100.0)  # the softmax over 2,048 values gives small gradients
    for _ in range(20):
        loss = icd_loss(embed(x).unsqueeze(0), icd_neighbours(5))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert spread(embed(x).detach()) > 1.05 * before


def test_icd_neighbourhood_and_bad_k():
    assert [icd_neighbours(n) for n in (1, 2, 5, 10, 50)] == [0, 1, 1, 2, 10]
    with pytest.raises(ValueError, match="1 <= k < n"):
        icd_loss(torch.randn(1, 3, 8), 3)


def test_moments_and_gram_gradients_equal_the_direct_formulas(real):
    """The fused moments (E[x^2] - E[x]^2) and the batched Gram give the pixel
    gradients of the textbook formulas, computed in float64."""
    images, net = real
    maps, _ = block_outputs(net, images[:4], "pre_norm")
    for m in maps:
        m = m.detach().requires_grad_(True)
        mean, std = class_moments(m, [4])
        (mean.square().sum() + std.sum() + class_gram(m, [4]).square().sum()).backward()
        x = m.detach().double().requires_grad_(True)
        n, c, h, w = x.shape
        mu = x.mean(dim=(2, 3))
        sd = ((x - mu[..., None, None]) ** 2).mean(dim=(2, 3)).add(1e-5).sqrt()
        flat = x.reshape(n, c, h * w)
        gram = torch.stack([f @ f.T for f in flat]).mean(0) / (c * h * w)
        (mu.mean(0).square().sum() + sd.mean(0).sum() + gram.square().sum()).backward()
        torch.testing.assert_close(m.grad.double(), x.grad, rtol=1e-3, atol=1e-7)
