"""``python -m wmdd.train --protocol dsa`` (the DM family's evaluation) on real CIFAR-10:
protocol settings, DSA views, resume, torchrun, and refusals."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_module, torchrun
from wmdd.runtime.training import build_epoch_scheduler


@pytest.fixture(scope="module")
def real_set(cifar_root, tmp_path_factory):
    """3 seeded real images per class in recover's output format (no teacher needed)."""
    out = tmp_path_factory.mktemp("rr") / "recover"
    run_module("wmdd.recover", "--dataset", "cifar10", "--data-path", cifar_root, "--output-dir", out,
               "--method", "random-real", "--ipc", "3", "--workers", "0")
    return out / "images"


def _train(images, root, out, *extra, check=True):
    return run_module("wmdd.train", "--protocol", "dsa", "--images", images, "--dataset", "cifar10", "--data-path",
                      root,
                      "--output-dir", out, "--workers", "0", "--epochs", "4", "--val-every", "2", *extra,
                      check=check, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def dsa_run(real_set, cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("dsa") / "train"
    _train(real_set, cifar_root, out, "--batch-size", "16")
    return out


def test_protocol_settings_are_the_dm_evaluation_unless_given(dsa_run):
    manifest = json.loads((dsa_run / "manifest.json").read_text())
    args = manifest["args"]
    assert (args["model"], args["opt"], args["lr"], args["momentum"], args["wd"], args["lr_scheduler"]) == \
        ("convnet_in", "sgd", 0.01, 0.9, 5e-4, "half")
    assert (args["epochs"], args["batch_size"]) == (4, 16)  # given on the command line: they win
    results = json.loads((dsa_run / "results.json").read_text())
    assert (results["mode"], results["protocol"], results["num_images"], results["training_images"],
            results["val_images"]) == ("dsa", "dsa", 30, 30, 100)
    lines = [json.loads(x) for x in (dsa_run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2, 3] and [x["lr"] for x in lines] == [0.01, 0.01, 0.001, 0.001]
    assert all(x["images"] == 30 for x in lines) and "val_top1" in lines[-1]


def test_half_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = build_epoch_scheduler("half", opt, 1000)
    lrs = []
    for _ in range(1000):
        lrs.append(opt.param_groups[0]["lr"])
        schedule.step()
    assert lrs[499] == 1.0 and lrs[500] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1)


def _lrs(name: str, epochs: int) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = build_epoch_scheduler(name, opt, epochs)
    lrs = []
    for _ in range(epochs):
        lrs.append(round(opt.param_groups[0]["lr"], 6))
        schedule.step()
    return lrs


def test_multistep_schedule_and_no_decay_at_epoch_0():
    lrs = _lrs("multistep", 60)
    assert lrs[39] == 1.0 and lrs[40] == 0.2 and lrs[49] == 0.2 and lrs[50] == 0.04 and lrs[-1] == 0.04
    assert _lrs("multistep", 1) == [1.0] and _lrs("half", 1) == [1.0]
    assert _lrs("multistep", 2) == [1.0, 0.04] and _lrs("half", 2) == [1.0, 0.1]


def test_two_rank_torchrun_trains_the_same_student(dsa_run, real_set, cifar_root, tmp_path):
    """Each recorded batch is split over the ranks (8 + 8 images), so DDP's averaged
    gradient is the one-process gradient up to float rounding."""
    ddp = tmp_path / "ddp"
    torchrun(2, "wmdd.train", "--protocol", "dsa", "--images", real_set, "--dataset", "cifar10", "--data-path",
             cifar_root, "--output-dir", ddp, "--workers", "0", "--epochs", "4", "--val-every", "2",
             "--batch-size", "16")
    full = json.loads((dsa_run / "results.json").read_text())
    both = json.loads((ddp / "results.json").read_text())
    assert both["num_images"] == 30 and abs(both["top1"] - full["top1"]) <= 2.0


@pytest.mark.parametrize("flags,expect", [
    (["--soft-labels", "x"], "--soft-labels is an option of --protocol fkd, not of --protocol dsa; drop it"),
    (["--mix-type", "mixup"], "--mix-type is an option of --protocol fkd, not of --protocol dsa; drop it"),
    (["-T", "4"], "--temperature is an option of --protocol fkd, not of --protocol dsa; drop it"),
    (["--dsa-strategy", "color_noise"], "noise"),
    (["--protocol", "dda"], "invalid choice: 'dda'"),
])
def test_bad_dsa_input(flags, expect, real_set, cifar_root, tmp_path):
    out = tmp_path / "out"
    proc = _train(real_set, cifar_root, out, *flags, check=False)
    assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
    assert not (out / "manifest.json").exists()


def test_stored_224px_images_reach_the_dsa_student_uncropped():
    """Distilled PNGs are loaded whole (resize only when the size differs), not centre-cropped
    like evaluation images above 64 px."""
    import numpy as np
    from PIL import Image

    from wmdd.data.datasets import get_spec
    from wmdd.data.transforms import distilled_transform, eval_transform, to_normalized_tensor

    spec = get_spec("imagenette")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    whole = to_normalized_tensor(spec)(image)
    assert torch.equal(distilled_transform(spec, 224)(image), whole)
    assert not torch.allclose(eval_transform(spec, 224)(image), whole, atol=0.1)
    assert distilled_transform(spec, 112)(image).shape == (3, 112, 112)


def test_dsa_student_trains_at_the_size_recover_recorded(cifar_root, tmp_path):
    """Images recovered at 16 px are trained at 16 px without --input-size (not at the
    dataset's 32 px); --input-size still wins."""
    rec = tmp_path / "recover"
    run_module("wmdd.recover", "--dataset", "cifar10", "--data-path", cifar_root, "--output-dir", rec,
               "--method", "random-real", "--ipc", "1", "--input-size", "16", "--workers", "0")
    assert json.loads((rec / "manifest.json").read_text())["input_size"] == 16
    for extra, size in (((), 16), (("--input-size", "32"), 32)):
        out = tmp_path / f"train{size}"
        _train(rec / "images", cifar_root, out, "--epochs", "1", "--val-every", "1", "--val-per-class", "2", *extra)
        assert json.loads((out / "results.json").read_text())["input_size"] == size
