"""Dataset registry, ImageFolder loading and its errors, on real CIFAR-10 images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from wmdd.data.datasets import dataset_names, get_spec, resolve_spec, stem_for_size
from wmdd.data.folders import image_folder, load_image, load_splits, select_per_class, split_dir
from wmdd.data.transforms import denormalize, eval_transform, pixel_bounds, to_normalized_tensor, train_transform
from wmdd.errors import UserError
from wmdd.relabel.views import DrawnEpochs, PlannedBatches, ViewSettings, image_sizes

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_registry_has_the_issue_datasets():
    assert set(dataset_names()) >= {"cifar10", "cifar100", "tiny-imagenet", "imagenette", "imagewoof",
                                    "imagenet", "digits", "imagefolder"}
    assert get_spec("cifar100").num_classes == 100
    assert get_spec("tiny-imagenet").num_classes == 200 and get_spec("tiny-imagenet").stem == "small"
    assert get_spec("imagenet").num_classes == 1000 and get_spec("imagenet").stem == "imagenet"
    assert get_spec("imagefolder").num_classes is None


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(UserError, match="unknown dataset 'cifar11'.*cifar10"):
        get_spec("cifar11")


def test_stem_follows_input_size():
    assert stem_for_size(32) == "small" and stem_for_size(64) == "small" and stem_for_size(112) == "imagenet"


def test_spec_round_trips_through_dict():
    spec = get_spec("imagenette")
    assert type(spec).from_dict(spec.to_dict()) == spec


def test_imagefolder_infers_classes_and_named_dataset_checks_count(cifar_root):
    ds = image_folder(split_dir(cifar_root, "train"))
    assert ds.classes == CIFAR_CLASSES
    assert resolve_spec("imagefolder", ds.classes).num_classes == 10
    with pytest.raises(UserError, match="found 10 class folders but dataset 'cifar100' has 100"):
        resolve_spec("cifar100", ds.classes, str(cifar_root))


def test_test_split_is_accepted_as_evaluation_split(cifar_root):
    assert split_dir(cifar_root, "val").name == "test"
    train, val = load_splits(cifar_root)
    assert len(train) == 200 and len(val) == 100
    assert train.classes == val.classes == CIFAR_CLASSES
    assert train.targets == sorted(train.targets)


def test_per_class_choice_is_seeded_and_balanced(cifar_root):
    train = image_folder(split_dir(cifar_root, "train"))
    a = select_per_class(train.samples, 5, seed=3)
    b = select_per_class(train.samples, 5, seed=3)
    c = select_per_class(train.samples, 5, seed=4)
    assert a == b and a != c
    assert [sum(1 for _, t in a if t == k) for k in range(10)] == [5] * 10
    with pytest.raises(UserError, match="fewer than the 21 per class"):
        select_per_class(train.samples, 21, seed=0, where="train")


def _copy(cifar_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    return root


def test_missing_split_names_the_path(cifar_root, tmp_path):
    root = _copy(cifar_root, tmp_path)
    shutil.rmtree(root / "test")
    with pytest.raises(UserError, match=f"{root / 'val'} or {root / 'test'}: missing split directory"):
        load_splits(root)


def test_empty_class_folder_names_the_folder(cifar_root, tmp_path):
    root = _copy(cifar_root, tmp_path)
    for f in (root / "train" / "cat").iterdir():
        f.unlink()
    with pytest.raises(UserError, match=f"{root / 'train' / 'cat'}: empty class folder"):
        load_splits(root)


def test_different_class_folders_between_splits(cifar_root, tmp_path):
    root = _copy(cifar_root, tmp_path)
    (root / "test" / "dog").rename(root / "test" / "wolf")
    with pytest.raises(UserError, match=r"missing: \['dog'\]; unexpected: \['wolf'\]"):
        load_splits(root)


def test_corrupt_image_names_the_file(cifar_root, tmp_path):
    root = _copy(cifar_root, tmp_path)
    bad = sorted((root / "train" / "frog").iterdir())[0]
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    with pytest.raises(UserError, match=f"{bad}: cannot read image"):
        load_image(str(bad))


def test_transforms_shapes_and_pixel_bounds(cifar_root):
    spec = get_spec("cifar10")
    img = load_image(str(sorted((cifar_root / "train" / "ship").iterdir())[0]))
    x = eval_transform(spec, 32)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert train_transform(spec, 32)(img).shape == (3, 32, 32)
    low, high = pixel_bounds(spec)
    assert (x >= low[0] - 1e-6).all() and (x <= high[0] + 1e-6).all()
    back = denormalize(x.unsqueeze(0), spec)[0]
    from torchvision.transforms.v2.functional import pil_to_tensor
    assert torch.allclose(back, pil_to_tensor(img).float() / 255, atol=1e-5)
    big = get_spec("imagenette")
    assert eval_transform(big, 112)(img).shape == (3, 112, 112)
    assert train_transform(big, 112)(img).shape == (3, 112, 112)


APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "


def test_hidden_folders_and_appledouble_files_are_skipped_everywhere(cifar_root, tmp_path, caplog):
    root = _copy(cifar_root, tmp_path)
    real = sorted((root / "train" / "cat").iterdir())[0]
    for hidden in ("train/.ipynb_checkpoints/cat", "test/.thumbnails", "train/cat/.ipynb_checkpoints",
                   "test/dog/.thumbnails/small"):
        (root / hidden).mkdir(parents=True)
        shutil.copy(real, root / hidden / "x.jpg")
    for n, folder in enumerate(("train/cat", "train/dog", "test/dog")):
        (root / folder / f"._{n:04d}.jpg").write_bytes(APPLEDOUBLE)
    caplog.set_level("INFO", logger="wmdd.data")
    train, val = load_splits(root)
    assert train.classes == val.classes == CIFAR_CLASSES
    assert len(train) == 200 and len(val) == 100
    assert not any("/." in p for p, _ in train.samples + val.samples)
    skipped = [r.getMessage() for r in caplog.records if "AppleDouble" in r.getMessage()]
    assert skipped == [f"{root / 'train'}: skipped 2 macOS AppleDouble file(s) (._name, metadata, not images)",
                       f"{root / 'test'}: skipped 1 macOS AppleDouble file(s) (._name, metadata, not images)"]
    assert train[0][0].size == (32, 32)


def test_class_folder_with_only_hidden_images_is_empty(cifar_root, tmp_path):
    root = _copy(cifar_root, tmp_path)
    for f in (root / "train" / "cat").iterdir():
        f.rename(f.with_name("._" + f.name))
    (root / "train" / "cat" / ".thumbnails").mkdir()
    shutil.copy(next((root / "train" / "dog").iterdir()), root / "train" / "cat" / ".thumbnails" / "t.jpg")
    with pytest.raises(UserError, match=f"{root / 'train' / 'cat'}: empty class folder"):
        load_splits(root)


def _odd_sized_folder(cifar_root, root):
    """A two-class ImageFolder of real CIFAR images resized to 24x24 and to 300x40 (JPEG)."""
    real = [load_image(str(p)) for p in sorted((cifar_root / "train" / "ship").iterdir())[:2]]
    for cls, img, size in (("small", real[0], (24, 24)), ("strip", real[1], (300, 40))):
        (root / cls).mkdir(parents=True)
        img.resize(size, Image.BICUBIC).save(root / cls / "0.jpg", quality=95)
    return root


@pytest.mark.parametrize("dataset, size", [("cifar10", 32), ("tiny-imagenet", 64), ("imagenette", 112)])
def test_images_of_any_size_come_out_at_the_input_size(cifar_root, tmp_path, dataset, size):
    root = _odd_sized_folder(cifar_root, tmp_path / "odd")
    spec = get_spec(dataset)
    for transform in (train_transform(spec, size), eval_transform(spec, size)):
        ds = image_folder(root, transform)
        for seed in range(3):
            torch.manual_seed(seed)
            assert [tuple(ds[i][0].shape) for i in range(len(ds))] == [(3, size, size)] * 2
    paths = [p for p, _ in image_folder(root).samples]
    settings = ViewSettings(batch_size=2, input_size=size)
    batches = PlannedBatches(paths, DrawnEpochs(image_sizes(paths), settings, seed=0), spec, settings)
    assert batches[(0, 0)]["views"].shape == (2, 3, size, size)


def test_small_image_strip_is_resized_not_cropped():
    """A 300x40 strip, black left half and white right half: a 32 px training view
    shows both halves (the whole strip squeezed), never a crop of one half."""
    strip = np.zeros((40, 300, 3), np.uint8)
    strip[:, 150:] = 255
    spec = get_spec("cifar10")
    transform = train_transform(spec, 32)
    for seed in range(8):
        torch.manual_seed(seed)
        pixels = denormalize(transform(Image.fromarray(strip)).unsqueeze(0), spec)[0]
        white_columns = int((pixels[:, :, 8:24].mean(dim=(0, 1)) > 0.5).sum())
        assert 4 <= white_columns <= 12, (seed, white_columns)


def test_resize_first_is_bit_identical_for_images_at_the_dataset_size(cifar_root):
    spec = get_spec("cifar10")
    before = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), to_normalized_tensor(spec)])
    after = train_transform(spec, 32)
    for path in sorted((cifar_root / "train" / "horse").iterdir())[:5]:
        img = load_image(str(path))
        assert img.size == (32, 32)
        for seed in range(4):
            torch.manual_seed(seed)
            expected = before(img)
            torch.manual_seed(seed)
            assert torch.equal(after(img), expected)
