"""The train split held on the device (wmdd/data/device_split.py) on real CIFAR-10 images:
every image once per epoch, DistributedSampler's sharding, a seeded and resumable order,
and the padded random crop + flip of the DataLoader path, checked image by image."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2

from wmdd.data import device_split
from wmdd.data.datasets import get_spec
from wmdd.data.device_split import DeviceSplit, choose_pipeline, uint8_images
from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import crop_resize, holding_size, normalize, random_resized_boxes
from wmdd.errors import UserError
from wmdd.runtime.distributed import DistContext

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def split(cifar_root):
    spec = get_spec("cifar10")
    pixels, labels = uint8_images(image_folder(split_dir(cifar_root, "train")), spec, 32, 0)
    return spec, pixels, labels


def _batches(split, epoch=0, rank=0, world=1, batch=48, seed=3):
    spec, pixels, labels = split
    data = DeviceSplit(pixels, labels, spec, batch_size=batch, seed=seed, ctx=DistContext(rank, world, 0, CPU))
    data.set_epoch(epoch)
    return data, list(data)


def _source(split, image: torch.Tensor) -> tuple[int, int, int, bool]:
    """(index, dx, dy, flip) of the split image of which ``image`` is the padded random crop
    (zero padding of 4 pixels, a 32 px crop at offset (4 - dy, 4 - dx)) and maybe flipped:
    RandomCrop(32, padding=4) + flip by their definition, tried for every offset."""
    spec, pixels, _ = split
    padded = torch.nn.functional.pad(pixels, (4, 4, 4, 4))
    for flip in (False, True):
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                crops = normalize(padded[:, :, 4 - dy:36 - dy, 4 - dx:36 - dx], spec)
                crops = crops.flip(-1) if flip else crops
                hits = ((crops - image).abs().amax(dim=(1, 2, 3)) < 1e-5).nonzero()
                if len(hits):
                    return int(hits[0]), dx, dy, flip
    raise AssertionError("no split image matches")


def test_an_epoch_serves_every_image_once_with_its_label(split):
    labels = split[2]
    data, batches = _batches(split)
    assert len(batches) == len(data) == 5 and [len(y) for _, y in batches] == [48, 48, 48, 48, 8]
    images = torch.cat([x for x, _ in batches])
    served = torch.cat([y for _, y in batches])
    assert images.dtype == torch.float32 and images.shape == (200, 3, 32, 32)
    found = [_source(split, img) for img in images[:12]]
    assert len({f[0] for f in found}) == 12
    assert all(served[i] == labels[f[0]] for i, f in enumerate(found))
    assert {f[3] for f in found} == {False, True} and len({(f[1], f[2]) for f in found}) > 5
    assert torch.bincount(served, minlength=10).tolist() == torch.bincount(labels, minlength=10).tolist()


def test_order_and_augmentation_are_seeded_by_epoch(split):
    first = torch.cat([x for x, _ in _batches(split, epoch=2)[1]])
    again = torch.cat([x for x, _ in _batches(split, epoch=2)[1]])
    other = torch.cat([x for x, _ in _batches(split, epoch=3)[1]])
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_two_ranks_share_one_permutation_as_distributed_sampler(split):
    """Rank r serves the positions DistributedSampler gives rank r (padded by repeating the start)
    of the one-process order: 199 images, 2 ranks of 100."""
    spec, pixels, labels = split
    sub = pixels[:199], labels[:199]
    alone = torch.cat([y for _, y in DeviceSplit(*sub, spec, batch_size=64, seed=0, ctx=DistContext(0, 1, 0, CPU))])
    for rank in (0, 1):
        data = DeviceSplit(*sub, spec, batch_size=64, seed=0, ctx=DistContext(rank, 2, 0, CPU))
        positions = list(DistributedSampler(range(199), num_replicas=2, rank=rank, shuffle=False))
        assert torch.equal(torch.cat([y for _, y in data]), alone[positions])


def test_pipeline_choice(split, monkeypatch):
    spec = split[0]
    monkeypatch.setattr(device_split, "free_memory", lambda device: 2 ** 33)  # 8 GiB free, whatever the host
    assert choose_pipeline("auto", spec, 50_000, 32, CPU) == "loader"
    assert choose_pipeline("device", spec, 50_000, 32, CPU) == "device"
    assert choose_pipeline("loader", spec, 50_000, 32, CPU) == "loader"
    nette = get_spec("imagenette")  # held at 256 px for 224-px crops: 9,469 x 3 x 256^2 bytes = 1.7 GiB
    assert choose_pipeline("device", nette, 9_469, 224, CPU) == "device"
    monkeypatch.setattr(device_split, "free_memory", lambda device: 2 ** 30)
    with pytest.raises(UserError, match="takes 1.7 GiB as uint8, cpu has 1.0 GiB free"):
        choose_pipeline("device", nette, 9_469, 224, CPU)
    with pytest.raises(UserError, match="GiB free; use --input-pipeline loader"):
        choose_pipeline("device", spec, 10 ** 12, 32, CPU)


def test_random_resized_boxes_follow_torchvision_distribution():
    """Bounds, area and aspect of every box, and the mean area and aspect against
    ``v2.RandomResizedCrop.get_params`` drawn in the same run (20,000 each: a standard error
    of about 0.002 on the mean area fraction)."""
    side, n = 64, 20_000
    boxes = random_resized_boxes(n, side, torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert boxes.min() >= 0 and boxes[:, 2:].max() <= side and (w >= 1).all() and (h >= 1).all()
    assert torch.equal(boxes, boxes.round())
    area = w * h / side ** 2
    assert area.min() >= 0.07 and area.max() <= 1  # 0.08-1 before rounding the sides to pixels
    torch.manual_seed(1)
    ref = torch.tensor([v2.RandomResizedCrop.get_params(torch.zeros(3, side, side), [0.08, 1.0], [3 / 4, 4 / 3])
                        for _ in range(n)], dtype=torch.float32)  # (top, left, h, w)
    assert abs(area.mean() - (ref[:, 2] * ref[:, 3] / side ** 2).mean()) < 0.01
    assert abs((w / h).mean() - (ref[:, 3] / ref[:, 2]).mean()) < 0.01
    assert abs((boxes[:, 0] / (side - w).clamp(min=1)).mean() - 0.5) < 0.02  # uniform position


def test_crop_resize_is_an_area_average_of_each_box():
    x = torch.rand(4, 3, 64, 64)
    boxes = torch.tensor([[0, 0, 64, 64], [8, 16, 40, 48], [0, 0, 16, 16], [32, 16, 64, 48]], dtype=torch.float32)
    out = crop_resize(x, boxes, 16)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        ref = torch.nn.functional.avg_pool2d(x[i:i + 1, :, y1:y2, x1:x2], (x2 - x1) // 16)[0]
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)


def test_large_images_are_random_resized_crops_of_the_held_square(cifar_root):
    """Imagenette's recipe on real images held at 64 px, cropped to 32 px: every image once per
    epoch with its label, values inside [0, 1] after undoing the normalisation, a seeded epoch,
    and crops that are not just the resized image."""
    spec = get_spec("imagenette")
    folder = image_folder(split_dir(cifar_root, "train"))
    assert holding_size(spec, 32) == 64
    pixels, labels = uint8_images(folder, spec, 32, 0, hold=True)
    assert pixels.shape == (200, 3, 64, 64) and pixels.dtype == torch.uint8
    data = DeviceSplit(pixels, labels, spec, batch_size=48, seed=3, ctx=DistContext(0, 1, 0, CPU), size=32)
    data.set_epoch(1)
    batches = list(data)
    x = torch.cat([b[0] for b in batches])
    assert x.shape == (200, 3, 32, 32)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(labels.tolist())
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    assert (x * std + mean).min() >= -1e-5 and (x * std + mean).max() <= 1 + 1e-5
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, list(data)))
    resized = normalize(torch.nn.functional.interpolate(pixels.float(), size=32, mode="area").round().byte(), spec)
    assert not any(torch.allclose(x[i], resized[j], atol=0.05) for i in range(5) for j in range(200))
