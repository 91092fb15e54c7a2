"""Differentiable Siamese Augmentation (wmdd/recover/dsa.py) on real CIFAR-10 images."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from PIL import Image

from wmdd.data.datasets import get_spec
from wmdd.data.transforms import pixel_bounds, to_normalized_tensor
from wmdd.errors import UserError
from wmdd.recover.dsa import (
    FAMILIES,
    DSADraw,
    DSAParams,
    apply_draw,
    augment,
    draw_params,
    draw_per_class,
    siamese,
    siamese_per_class,
)

SIDE = 32


@pytest.fixture(scope="module")
def images(cifar_root) -> torch.Tensor:
    """The first train image of each of the 10 classes, normalised: ``[10, 3, 32, 32]`` float32."""
    to_tensor = to_normalized_tensor(get_spec("cifar10"))
    paths = [sorted(d.iterdir())[0] for d in sorted((cifar_root / "train").iterdir())]
    return torch.stack([to_tensor(Image.open(p).convert("RGB")) for p in paths])


def _real_syn(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real batch of 6 images and synthetic batch of 3 whose last image is real[0]."""
    return images[:6], torch.cat([images[6:8], images[:1]])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _draw(family: str, shared: bool = True, **values) -> DSADraw:
    return DSADraw(family=family, side=SIDE, shared=shared, values={k: torch.tensor(v) for k, v in values.items()})


@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_applies_one_draw_to_real_and_synthetic(images, family):
    params = DSAParams(strategy=family)
    real, syn = _real_syn(images)
    for seed in range(4):
        real_aug, syn_aug = siamese(real, syn, params, _gen(seed))
        draw = draw_params(params, len(real), SIDE, _gen(seed), shared=True)
        assert draw.family == family and draw.n == 1
        for batch, out in ((real, real_aug), (syn, syn_aug)):
            assert out.shape == batch.shape and out.dtype == batch.dtype
            for i in range(len(batch)):
                assert torch.allclose(out[i:i + 1], apply_draw(batch[i:i + 1], draw), atol=1e-6)
        # the same picture in both batches comes out identical
        assert torch.equal(real_aug[0], syn_aug[2])


@pytest.mark.parametrize("family", ["color", "crop", "cutout", "scale", "rotate"])
def test_per_image_draws_differ_between_images(images, family):
    draw = draw_params(DSAParams(strategy=family), len(images), SIDE, _gen(0))
    assert draw.n == len(images) and not draw.shared
    first = next(iter(draw.values.values()))
    assert len(set(first.tolist())) > 1
    out = apply_draw(images, draw)
    for i in range(len(images)):
        one = DSADraw(family, SIDE, True, {k: t[i:i + 1] for k, t in draw.values.items()})
        assert torch.allclose(out[i:i + 1], apply_draw(images[i:i + 1], one), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_synthetic_pixels(images, family):
    real, syn = _real_syn(images)
    syn = syn.clone().requires_grad_(True)
    weights = torch.randn(syn.shape, generator=_gen(1))
    for seed in range(3):
        syn.grad = None
        _, syn_aug = siamese(real, syn, DSAParams(strategy=family), _gen(seed))
        (syn_aug * weights).sum().backward()
        assert torch.isfinite(syn.grad).all()
        assert (syn.grad.flatten(1).abs().sum(1) > 0).all()


def test_cutout_region_has_zero_gradient_and_the_rest_not(images):
    x = images.clone().requires_grad_(True)
    draw = draw_params(DSAParams(strategy="cutout"), len(x), SIDE, _gen(3))
    out = apply_draw(x, draw)
    (out * torch.randn(out.shape, generator=_gen(4)).abs().add(0.1)).sum().backward()
    size = SIDE // 2
    for i in range(len(x)):
        cy, cx = int(draw.values["cy"][i]), int(draw.values["cx"][i])
        assert int(draw.values["size"][i]) == size and 0 <= cy <= SIDE and 0 <= cx <= SIDE
        region = torch.zeros(SIDE, SIDE, dtype=torch.bool)
        region[max(cy - size // 2, 0):min(cy - size // 2 + size, SIDE),
               max(cx - size // 2, 0):min(cx - size // 2 + size, SIDE)] = True
        assert region.any()
        assert (x.grad[i][:, region] == 0).all() and (x.grad[i][:, ~region] != 0).all()
        assert (out[i][:, region] == 0).all() and torch.equal(out[i][:, ~region], images[i][:, ~region])


def test_color_formulas(images):
    x = images[3:4]
    assert torch.allclose(apply_draw(x, _draw("color", brightness=[-0.4], saturation=[1.0], contrast=[1.0])),
                          x - 0.4, atol=1e-6)
    mean_c = x.mean(dim=1, keepdim=True)
    assert torch.allclose(apply_draw(x, _draw("color", brightness=[0.0], saturation=[1.7], contrast=[1.0])),
                          (x - mean_c) * 1.7 + mean_c, atol=1e-6)
    mean_all = x.mean()
    assert torch.allclose(apply_draw(x, _draw("color", brightness=[0.0], saturation=[1.0], contrast=[0.6])),
                          (x - mean_all) * 0.6 + mean_all, atol=1e-6)
    # brightness, then saturation, then contrast; no clamping in normalised space
    y = x + 0.45
    y = (y - y.mean(dim=1, keepdim=True)) * 0.3 + y.mean(dim=1, keepdim=True)
    y = (y - y.mean()) * 1.4 + y.mean()
    out = apply_draw(x, _draw("color", brightness=[0.45], saturation=[0.3], contrast=[1.4]))
    assert torch.allclose(out, y, atol=1e-5)
    low, high = pixel_bounds(get_spec("cifar10"))
    dark = apply_draw(x, _draw("color", brightness=[-0.5], saturation=[2.0], contrast=[1.5]))
    assert (dark < low).any() or (dark > high).any()


def test_flip_translation_rotation_scale_against_direct_computation(images):
    x = images[:2]
    assert torch.equal(apply_draw(x, _draw("flip", flip=[True])), torch.flip(x, dims=[3]))
    assert torch.equal(apply_draw(x, _draw("flip", flip=[False])), x)
    flips = apply_draw(x, _draw("flip", shared=False, flip=[True, False]))
    assert torch.equal(flips[0], torch.flip(x[0], dims=[2])) and torch.equal(flips[1], x[1])

    for dx, dy in [(3, -2), (-4, 4), (0, 0), (4, 1)]:
        rows, cols = torch.arange(SIDE) - dy, torch.arange(SIDE) - dx
        inside = ((rows >= 0) & (rows < SIDE)).view(-1, 1) & ((cols >= 0) & (cols < SIDE)).view(1, -1)
        expected = torch.roll(x, shifts=(dy, dx), dims=(2, 3)) * inside
        assert torch.equal(apply_draw(x, _draw("crop", dx=[dx], dy=[dy])), expected)

    # float32 sampling grids are exact to about 1e-6 of the side, hence 1e-4 on pixel values
    assert torch.allclose(apply_draw(x, _draw("rotate", angle=[90.0])), torch.rot90(x, 1, dims=(2, 3)), atol=1e-4)
    assert torch.allclose(apply_draw(x, _draw("rotate", angle=[-90.0])), torch.rot90(x, -1, dims=(2, 3)), atol=1e-4)
    assert torch.allclose(apply_draw(x, _draw("rotate", angle=[0.0])), x, atol=1e-4)
    assert torch.allclose(apply_draw(x, _draw("scale", sx=[1.0], sy=[1.0])), x, atol=1e-4)

    # sy alone resamples rows: output row r reads input row (sy (2r/(S-1) - 1) + 1) (S-1)/2, linear, zeros outside
    sy = 1.2
    expected = torch.zeros_like(x)
    for r in range(SIDE):
        pos = (sy * (2 * r / (SIDE - 1) - 1) + 1) * (SIDE - 1) / 2
        r0, w = math.floor(pos), pos - math.floor(pos)
        for row, weight in ((r0, 1 - w), (r0 + 1, w)):
            if 0 <= row < SIDE:
                expected[:, :, r] += weight * x[:, :, row]
    assert torch.allclose(apply_draw(x, _draw("scale", sx=[1.0], sy=[sy])), expected, atol=1e-4)


def test_seeded_generator_gives_identical_draws(images):
    params = DSAParams()
    for seed in range(5):
        torch.manual_seed(seed)
        a = draw_params(params, 10, SIDE, _gen(seed))
        torch.manual_seed(seed + 100)
        b = draw_params(params, 10, SIDE, _gen(seed))
        assert a.family == b.family and a.values.keys() == b.values.keys()
        assert all(torch.equal(a.values[k], b.values[k]) for k in a.values)
        assert torch.equal(augment(images, params, _gen(seed)), augment(images, params, _gen(seed)))
    draws = [draw_params(params, 10, SIDE, _gen(s)) for s in range(20)]
    assert len({(d.family, tuple(next(iter(d.values.values())).tolist())) for d in draws}) > 1


def test_family_choice_is_uniform_and_values_in_range():
    params, gen = DSAParams(), _gen(7)
    draws = [draw_params(params, 16, SIDE, gen) for _ in range(1200)]
    counts = Counter(d.family for d in draws)
    assert set(counts) == set(FAMILIES)
    assert all(140 <= c <= 260 for c in counts.values()), counts  # 200 expected, sd 12.9

    def pooled(family, key):
        return torch.cat([d.values[key] for d in draws if d.family == family])

    for key in ("dx", "dy"):
        assert set(pooled("crop", key).tolist()) == set(range(-4, 5))
    for key in ("cy", "cx"):
        assert set(pooled("cutout", key).tolist()) == set(range(0, SIDE + 1))
    for key in ("sx", "sy"):
        v = pooled("scale", key)
        assert v.min() >= 1 / 1.2 and v.max() <= 1.2 and v.min() < 0.85 and v.max() > 1.18
    angle = pooled("rotate", "angle")
    assert angle.min() >= -15 and angle.max() <= 15 and angle.min() < -14 and angle.max() > 14
    assert 0.45 < pooled("flip", "flip").float().mean() < 0.55
    b, s, c = (pooled("color", k) for k in ("brightness", "saturation", "contrast"))
    assert -0.5 <= b.min() < -0.45 and 0.45 < b.max() <= 0.5
    assert 0 <= s.min() < 0.05 and 1.95 < s.max() <= 2.0
    assert 0.5 <= c.min() < 0.55 and 1.45 < c.max() <= 1.5
    twice = Counter(draw_params(DSAParams(strategy="flip_flip_rotate"), 1, SIDE, gen).family for _ in range(600))
    assert 350 < twice["flip"] < 450


def test_bad_parameters_are_user_errors(images):
    with pytest.raises(UserError, match=r"unknown family 'blur'.*color, crop, cutout, flip, scale, rotate"):
        DSAParams(strategy="color_blur")
    with pytest.raises(UserError, match="unknown family ''"):
        DSAParams(strategy="color__crop")
    with pytest.raises(UserError, match="brightness must be a finite number >= 0, got -1"):
        DSAParams(brightness=-1.0)
    with pytest.raises(UserError, match="rotate"):
        DSAParams(rotate=-15.0)
    with pytest.raises(UserError, match="scale"):
        DSAParams(scale=0.8)
    with pytest.raises(UserError, match="flip_prob"):
        DSAParams(flip_prob=1.5)
    with pytest.raises(ValueError, match="draw is for 10 images, the batch has 3"):
        apply_draw(images[:3], draw_params(DSAParams(strategy="rotate"), 10, SIDE, _gen(0)))
    with pytest.raises(ValueError, match="16, 16"):
        apply_draw(images, draw_params(DSAParams(), 10, 16, _gen(0)))


def test_per_class_draws_equal_one_shared_draw_per_class(images):
    """siamese_per_class (one call for all classes) gives each class what siamese's shared draw
    with the same parameters gives it, for real and synthetic images, over every family."""
    real = torch.cat([images, images.flip(0)[:7]])  # classes of 6, 4 and 7 real images
    real_sizes, syn_sizes = [6, 4, 7], [2, 2, 2]
    syn = images[:6].clone().requires_grad_(True)
    seen = set()
    for seed in range(12):
        real_aug, syn_aug = siamese_per_class(real, real_sizes, syn, syn_sizes, DSAParams(), _gen(seed))
        draws = draw_per_class(DSAParams(), 3, SIDE, _gen(seed))
        for j, (r, s) in enumerate(zip(real.split(real_sizes), syn.split(syn_sizes))):
            draw = draws.draws[int(draws.family[j])]
            seen.add(draw.family)
            shared = DSADraw(draw.family, SIDE, True, {k: v[j:j + 1] for k, v in draw.values.items()})
            torch.testing.assert_close(real_aug.split(real_sizes)[j], apply_draw(r, shared), rtol=0, atol=1e-6)
            torch.testing.assert_close(syn_aug.split(syn_sizes)[j], apply_draw(s, shared), rtol=0, atol=1e-6)
        assert not real_aug.requires_grad and syn_aug.requires_grad
    assert seen == set(FAMILIES)


def test_per_class_family_choice_is_uniform_over_the_strategy():
    draws = draw_per_class(DSAParams(strategy="crop_flip_crop"), 30_000, SIDE, _gen(0))
    assert [d.family for d in draws.draws] == ["crop", "flip"]
    share = float((draws.family == 0).double().mean())
    assert abs(share - 2 / 3) < 0.01
