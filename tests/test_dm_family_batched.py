"""The DM family's batched iteration (all classes of a batch in one set of operations)
against a per-class computation of the same draws, on real CIFAR-10 images: loss and
pixel gradient agree within float tolerance, and the real batches are what DM draws."""

from __future__ import annotations

import pytest
import torch

from wmdd.data.datasets import get_spec
from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import eval_transform, normalize
from wmdd.models import penultimate_features
from wmdd.models.convnet import block_outputs
from wmdd.models.experts import load_experts
from wmdd.recover.dsa import DSADraw, apply_draw, apply_sequence, draw_per_class, draw_sequence
from wmdd.recover.matching import class_gram, class_moments, correlation_loss, icd_loss, moments_loss
from wmdd.recover.methods import Resources
from wmdd.recover.methods.dance import load_middle_encoder
from wmdd.recover.methods.dm import reinitialise
from wmdd.recover.multiformation import decode
from wmdd.recover.options import build_parser, resolve_args
from wmdd.recover.real_pool import RealPool
from wmdd.runtime.training import derive_seed

CLASSES = [1, 4, 7]
IPC = 2


@pytest.fixture(scope="module")
def data(cifar_root):
    """The CIFAR-10 fixture's train split with class 4 cut to its first 5 images, so that with
    --batch-real 6 the classes of the batch draw 6, 5 and 6 real images (unequal sizes)."""
    spec = get_spec("cifar10")
    dataset = image_folder(split_dir(cifar_root, "train"), eval_transform(spec, 32))
    first = [i for i, t in enumerate(dataset.targets) if t == 4][:5]
    keep = [i for i, t in enumerate(dataset.targets) if t != 4 or i in first]
    dataset.samples = dataset.imgs = [dataset.samples[i] for i in keep]
    dataset.targets = [dataset.targets[i] for i in keep]
    return spec, dataset


def _method(name, data, cifar_root, *extra, experts=None):
    spec, dataset = data
    flags = ["--method", name, "--dataset", "cifar10", "--data-path", str(cifar_root), "--output-dir", "unused",
             "--ipc", str(IPC), "--batch-real", "6", "--device", "cpu", *extra]
    if experts:
        flags += ["--experts", str(experts)]
    args = build_parser().parse_args(flags)
    cls = resolve_args(args)
    return cls(Resources(args=args, spec=spec, input_size=32, classes=list(dataset.classes), dataset=dataset,
                         device=torch.device("cpu"), experts=load_experts(experts) if experts else None))


def _batched(method, x):
    """Loss, parts and pixel gradient of one iteration of the method's objective."""
    x = x.clone().requires_grad_(True)
    objective = method.batch_objective(CLASSES, 0)
    torch.manual_seed(5)  # DM's network is re-initialised from the global RNG
    loss, parts = objective(x, 0)
    loss.backward()
    return loss.detach(), parts, x.grad


def _shared(draw: DSADraw, j: int) -> DSADraw:
    return DSADraw(draw.family, draw.side, True, {k: v[j:j + 1] for k, v in draw.values.items()})


def _start(data) -> torch.Tensor:
    spec, dataset = data
    pool = RealPool(dataset, CLASSES, spec, 32)
    return torch.cat([pool.sample(c, IPC, torch.Generator().manual_seed(c)) for c in CLASSES])


@pytest.mark.parametrize("name", ["dm", "ddm"])
def test_dm_and_ddm_batched_iteration_equals_the_per_class_computation(name, data, cifar_root):
    spec, dataset = data
    method = _method(name, data, cifar_root)
    x = _start(data)
    loss, parts, grad = _batched(method, x)

    # Today's per-class iteration, on the same network, real images and draws.
    torch.manual_seed(5)
    reinitialise(method.net)
    generator = torch.Generator().manual_seed(derive_seed(method.res.args.seed, "dsa", 0))
    real, sizes = RealPool(dataset, CLASSES, spec, 32).sample_classes(6, generator)
    assert sizes == [6, 5, 6]
    draws = draw_per_class(method.dsa, len(CLASSES), 32, generator)
    syn = x.clone().requires_grad_(True)
    total, terms = torch.zeros((), dtype=torch.float64), {}
    for j, (r, s) in enumerate(zip(real.split(sizes), syn.split(IPC))):
        draw = _shared(draws.draws[int(draws.family[j])], j)
        r, s = apply_draw(r, draw), apply_draw(s, draw)
        r_maps, r_emb = block_outputs(method.net, r, "post_norm")
        s_maps, s_emb = block_outputs(method.net, s, "post_norm")
        assert torch.allclose(s_emb, penultimate_features(method.net, s), atol=1e-5)
        part = {"dm": (r_emb.detach().double().mean(0) - s_emb.double().mean(0)).square().sum()}
        if name == "ddm":
            part["mm"] = moments_loss([class_moments(m.detach(), [len(r)]) for m in r_maps],
                                      [class_moments(m, [IPC]) for m in s_maps]).double()
            part["cm"] = correlation_loss([class_gram(m.detach(), [len(r)]) for m in r_maps],
                                          [class_gram(m, [IPC]) for m in s_maps]).double()
            part["icd"] = icd_loss(s_emb.unsqueeze(0), 1).double()
        for key, value in part.items():
            terms[key] = terms.get(key, 0.0) + value
    args = method.res.args
    total = terms["dm"]
    if name == "ddm":
        style = args.mm_weight * terms["mm"] + terms["cm"]
        total = total + args.style_weight * style + args.icd_weight * terms["icd"]
    total.backward()
    assert sorted(parts) == sorted(terms)
    for key, value in terms.items():
        assert abs(float(parts[key]) - float(value.detach())) <= 1e-5 * abs(float(value.detach())) + 1e-7, key
    assert abs(float(loss) - float(total.detach())) <= 1e-5 * abs(float(total.detach()))
    torch.testing.assert_close(grad, syn.grad, rtol=1e-4, atol=1e-4 * float(syn.grad.abs().max()))


def test_dance_batched_iteration_equals_the_per_class_computation(data, cifar_root, experts):
    spec, dataset = data
    method = _method("dance", data, cifar_root, "--num-experts", "2", experts=experts)  # factor 2
    x = _start(data)
    loss, parts, grad = _batched(method, x)

    args = method.res.args
    generator = torch.Generator().manual_seed(derive_seed(args.seed, "dance", 0))
    m = int(torch.randint(args.num_experts, (1,), generator=generator))
    lam = float(torch.rand(1, generator=generator))
    load_middle_encoder(method.middle, method.experts, m, lam)
    real, sizes = RealPool(dataset, CLASSES, spec, 32).sample_classes(args.batch_real, generator)
    draws = draw_sequence(method.dsa, len(CLASSES), 32, generator)
    syn = x.clone().requires_grad_(True)
    inner, calib = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for j, (r, s) in enumerate(zip(real.split(sizes), decode(syn, 2).split(IPC * 4))):
        chain = [_shared(d, j) for d in draws]
        r, s = apply_sequence(r, chain), apply_sequence(s, chain)
        r_emb = penultimate_features(method.middle, r).detach().double()
        inner = inner + (r_emb.mean(0) - penultimate_features(method.middle, s).double().mean(0)).square().sum()
        calib = calib + torch.nn.functional.cross_entropy(method.final(s).double(),
                                                          torch.full((IPC * 4,), CLASSES[j]))
    # the objective's gradient passes through pixel_space_gradient: d/dx scaled by 1 / std^2
    (inner + args.calib_weight * calib).backward()
    inner, calib = inner.detach(), calib.detach()
    expected_grad = syn.grad / torch.tensor(spec.std).view(1, -1, 1, 1).square()
    assert int(parts["expert"]) == m and abs(float(parts["lambda"]) - lam) < 1e-7
    assert abs(float(parts["inner"]) - float(inner)) <= 1e-5 * float(inner)
    assert abs(float(parts["calib"]) - float(calib)) <= 1e-5 * float(calib)
    assert abs(float(loss) - float(inner + args.calib_weight * calib)) <= 1e-5 * float(loss)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4 * float(expected_grad.abs().max()))


def test_real_pool_draws_distinct_images_of_each_class(data):
    """sample_classes: min(n, size) distinct images per class, of that class, in the pool's
    class order, normalised as the evaluation transform; unequal class sizes included."""
    spec, dataset = data
    pool = RealPool(dataset, CLASSES, spec, 32)  # class 4 has 5 images: the draw must stay inside them
    by_class = {c: {tuple(normalize(p, spec).flatten()[:64].tolist()) for p in pool.pixels[o:o + s]}
                for c, o, s in zip(CLASSES, pool.offsets.tolist(), pool.sizes)}
    seen = {c: set() for c in CLASSES}
    for seed in range(20):
        images, counts = pool.sample_classes(6, torch.Generator().manual_seed(seed))
        assert counts == [6, 5, 6] and images.dtype == torch.float32 and images.shape == (17, 3, 32, 32)
        for c, chunk in zip(CLASSES, images.split(counts)):
            keys = [tuple(img.flatten()[:64].tolist()) for img in chunk]
            assert len(set(keys)) == len(keys) and set(keys) <= by_class[c]
            seen[c] |= set(keys)
    assert len(seen[4]) == 5 and len(seen[1]) == len(by_class[1]) == 20
