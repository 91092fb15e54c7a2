"""The train split held on the device (wmdd/data/device_split.py) on real CIFAR-10 images:
every image once per epoch, DistributedSampler's sharding, a seeded and resumable order,
and the padded random crop + flip of the DataLoader path, checked image by image."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from wmdd.data import device_split
from wmdd.data.datasets import get_spec
from wmdd.data.device_split import DeviceSplit, choose_pipeline, uint8_images
from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import normalize
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
    with pytest.raises(UserError, match="random-resized crops.*--input-pipeline loader"):
        choose_pipeline("device", get_spec("imagenette"), 9_469, 224, CPU)
    with pytest.raises(UserError, match="GiB free; use --input-pipeline loader"):
        choose_pipeline("device", spec, 10 ** 12, 224, CPU)
