"""relabel and train on a seeded real CIFAR-10 subset (IPC 5): exact view replay,
KD loss by hand, round trip, resume, mismatch errors, torchrun."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from tests.conftest import REPO, run_module, torchrun
from wmdd.data.datasets import DatasetSpec
from wmdd.errors import UserError
from wmdd.models.teacher import load_teacher
from wmdd.relabel.soft_labels import SoftLabels, dense_logits
from wmdd.relabel.views import DrawnEpochs, EpochPlan, PlannedBatches, ViewSettings, image_sizes, plan_epoch
from wmdd.train.data import load_image_set
from wmdd.train.losses import kd_loss, mixed_cross_entropy


@pytest.fixture(scope="module")
def ipc5_images(tiny_teacher, cifar_root, tmp_path_factory):
    """A seeded real subset, 5 images per class, in recover's output format."""
    out = tmp_path_factory.mktemp("ipc5") / "recover"
    run_module("wmdd.recover", "--teacher", tiny_teacher, "--data-path", cifar_root, "--output-dir", out,
               "--method", "random-real", "--ipc", "5", "--workers", "0")
    return out / "images"


def _relabel(teacher, images, out, *extra, epochs=3, check=True):
    return run_module("wmdd.relabel", "--teacher", teacher, "--images", images, "--output-dir", out,
                      "--epochs", epochs, "--batch-size", 10, "--workers", 0, *extra, check=check)


@pytest.fixture(scope="module")
def relabelled(tiny_teacher, ipc5_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("relabel") / "full"
    proc = _relabel(tiny_teacher, ipc5_images, out)
    (out / "log.txt").write_text(proc.stderr)
    return out


def test_relabel_writes_epoch_files_meta_and_sizes(relabelled, ipc5_images):
    meta = json.loads((relabelled / "soft_labels" / "meta.json").read_text())
    assert (meta["batch_size"], meta["epochs"], meta["top_k"], meta["num_classes"]) == (10, 3, 10, 10)
    assert len(meta["images"]["files"]) == 50 and meta["images"]["files"][0] == "airplane/0000.png"
    record = torch.load(relabelled / "soft_labels" / "epoch_0001.pt", weights_only=True)
    assert record["values"].dtype == torch.float16 and record["values"].shape == (50, 10)
    assert "indices" not in record  # k >= classes: all logits in class order
    manifest = json.loads((relabelled / "manifest.json").read_text())
    assert manifest["bytes"] == sum(f.stat().st_size for f in (relabelled / "soft_labels").glob("epoch_*.pt"))
    assert manifest["bytes_per_image_epoch"] == pytest.approx(manifest["bytes"] / 150)
    assert "bytes per image-epoch" in (relabelled / "log.txt").read_text()


@pytest.mark.parametrize("epoch,batch", [(0, 0), (1, 3), (2, 4)])
def test_train_views_equal_relabel_views_and_soft_labels_equal_teacher(relabelled, ipc5_images, tiny_teacher,
                                                                       epoch, batch):
    soft = SoftLabels(relabelled)
    images = load_image_set(ipc5_images)
    plan, logits = soft.epoch(epoch)
    # the stored plan is the plan relabel drew from (seed, epoch)
    redrawn = plan_epoch(image_sizes(images.paths), soft.settings, soft.meta["seed"], epoch)
    for name in ("order", "boxes", "flips", "partner", "lam", "mix_boxes"):
        assert torch.equal(getattr(plan, name), getattr(redrawn, name)), name
    spec = DatasetSpec.from_dict(soft.meta["dataset"])
    drawn = PlannedBatches(images.paths, DrawnEpochs(image_sizes(images.paths), soft.settings, soft.meta["seed"]),
                           spec, soft.settings)
    in_process = drawn[(epoch, batch)]  # relabel's construction: plan drawn from (seed, epoch)
    stored = PlannedBatches(images.paths, soft, spec, soft.settings)  # train's: stored plan, worker processes
    loader = DataLoader(stored, batch_size=None, sampler=stored.keys([epoch]), num_workers=2)
    from_workers = list(loader)[batch]
    assert torch.equal(in_process["views"], from_workers["views"])
    assert torch.equal(from_workers["targets"], logits[list(plan.positions(batch))])
    # independent reconstruction of one mixed view with torchvision ops
    p = plan.positions(batch)[2]
    q = int(plan.partner[p])

    def crop(pos):
        img = F.pil_to_tensor(Image.open(images.paths[int(plan.order[pos])]).convert("RGB"))
        top, left, h, w = plan.boxes[pos].tolist()
        v = F.resized_crop(img, top, left, h, w, [32, 32], antialias=True)
        v = F.horizontal_flip(v) if plan.flips[pos] else v
        return F.normalize(v.float() / 255, list(spec.mean), list(spec.std))

    expected = crop(p).clone()
    top, left, h, w = plan.mix_boxes[batch].tolist()
    expected[:, top:top + h, left:left + w] = crop(q)[:, top:top + h, left:left + w]
    assert torch.equal(in_process["views"][2], expected)
    # the stored soft labels are the teacher's logits on exactly these views (fp16 rounding)
    teacher = load_teacher(tiny_teacher)
    with torch.no_grad():
        fresh = teacher.model(from_workers["views"])
    assert torch.allclose(from_workers["targets"], fresh.half().float(), rtol=2e-3, atol=2e-3)


def test_kd_loss_equals_hand_computation():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5), torch.randn(3, 5) * 3
    w = torch.tensor([0.5, 1.0, 2.0])
    T = 4.0

    def hand(student, teacher_rows, weights):
        total = 0.0
        for i in range(3):
            zs = [v / T for v in student[i].tolist()]
            kept = {j: v / T for j, v in teacher_rows[i].items()}
            ls = math.log(sum(math.exp(v) for v in zs))
            lt = math.log(sum(math.exp(v) for v in kept.values()))
            kl = sum(math.exp(v - lt) * ((v - lt) - (zs[j] - ls)) for j, v in kept.items())
            total += weights[i] * kl
        return total / 3 * T * T

    full_rows = [{j: t[i, j].item() for j in range(5)} for i in range(3)]
    assert kd_loss(s, t, T).item() == pytest.approx(hand(s, full_rows, [1, 1, 1]), rel=1e-5)
    assert kd_loss(s, t, T, w).item() == pytest.approx(hand(s, full_rows, w.tolist()), rel=1e-5)
    top = t.topk(2, dim=1)
    top_rows = [{j: v for j, v in zip(top.indices[i].tolist(), top.values[i].tolist())} for i in range(3)]
    truncated = dense_logits(top.values.half(), top.indices.short(), 5)
    assert torch.isinf(truncated).sum() == 9
    assert kd_loss(s, truncated, T, w).item() == pytest.approx(
        hand(s, [{j: float(torch.tensor(v).half()) for j, v in r.items()} for r in top_rows], w.tolist()), rel=1e-4)


def test_mixed_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    a, b, lam, w = torch.tensor([0, 2]), torch.tensor([1, 1]), torch.tensor([0.75, 0.4]), torch.tensor([1.0, 3.0])

    def ce(row, k):
        return -math.log(math.exp(row[k]) / sum(math.exp(v) for v in row))

    rows = logits.tolist()
    first = 1.0 * (0.75 * ce(rows[0], 0) + 0.25 * ce(rows[0], 1))
    second = 3.0 * (0.4 * ce(rows[1], 2) + 0.6 * ce(rows[1], 1))
    hand = (first + second) / 2
    assert mixed_cross_entropy(logits, a, b, lam, w).item() == pytest.approx(hand, rel=1e-6)


def _train(images, soft, root, out, *extra, check=True, epochs=3):
    return run_module("wmdd.train", "--images", images, "--soft-labels", soft, "--data-path", root, "--output-dir", out,
                      "--model", "convnet", "--model-kwargs", "width=16", "--epochs", epochs, "--batch-size", 10,
                      "--workers", 2, "--val-every", 1, *extra, check=check)


def test_relabel_train_round_trip_writes_results(relabelled, ipc5_images, cifar_root, tmp_path, tiny_teacher):
    out = tmp_path / "student"
    _train(ipc5_images, relabelled, cifar_root, out, "--teacher", tiny_teacher)
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"top1", "top5", "epochs", "model", "images", "num_images"}
    assert (results["epochs"], results["model"], results["num_images"]) == (3, "convnet", 50)
    assert results["val_images"] == 100
    assert 0 <= results["top1"] <= results["top5"] <= 100
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2] and lines[0]["images"] == 50
    assert json.loads((out / "manifest.json").read_text())["results"] == results


def test_mismatched_batch_size_fails_before_training(relabelled, ipc5_images, cifar_root, tmp_path):
    out = tmp_path / "student"
    proc = _train(ipc5_images, relabelled, cifar_root, out, "--batch-size", "20", check=False)
    assert proc.returncode == 2
    assert "--batch-size 20 differs from the batch size 10" in proc.stderr
    assert not (out / "metrics.jsonl").exists() and not (out / "manifest.json").exists()


def test_other_mismatches_are_clear_errors(relabelled, ipc5_images, cifar_root, tmp_path, tiny_teacher):
    proc = _train(ipc5_images, relabelled, cifar_root, tmp_path / "a", epochs=5, check=False)
    assert proc.returncode == 2 and "--epochs 5 is more than the 3 epochs recorded" in proc.stderr
    proc = _train(ipc5_images, relabelled, cifar_root, tmp_path / "b", "--input-size", "64", check=False)
    assert proc.returncode == 2 and "--input-size 64 differs from the recorded input size 32" in proc.stderr
    ckpt = torch.load(tiny_teacher / "teacher.pt", weights_only=True)
    ckpt["val"] = None
    torch.save(ckpt, tmp_path / "other_teacher.pt")
    proc = _train(ipc5_images, relabelled, cifar_root, tmp_path / "t", "--teacher", tmp_path / "other_teacher.pt",
                  check=False)
    assert proc.returncode == 2 and "--teacher differs from the teacher the soft labels were" in proc.stderr
    other = tmp_path / "other"
    shutil.copytree(ipc5_images, other)
    (other / "cat" / "0000.png").write_bytes((other / "dog" / "0000.png").read_bytes())
    proc = _train(other, relabelled, cifar_root, tmp_path / "c", check=False)
    assert proc.returncode == 2 and "differs from the images the soft labels were recorded on" in proc.stderr


def test_relabel_killed_and_rerun_gives_identical_files(relabelled, ipc5_images, tiny_teacher, tmp_path):
    epochs = 6
    full = tmp_path / "full6"
    _relabel(tiny_teacher, ipc5_images, full, epochs=epochs)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "wmdd.relabel", "--teacher", str(tiny_teacher), "--images", str(ipc5_images),
           "--output-dir", str(killed), "--epochs", str(epochs), "--batch-size", "10", "--workers", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (killed / "soft_labels" / "epoch_0000.pt").exists() and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((killed / "soft_labels").glob("epoch_*.pt")))
    assert 1 <= done < epochs and not (killed / "manifest.json").exists()
    rerun = _relabel(tiny_teacher, ipc5_images, killed, epochs=epochs)
    assert f"({epochs - done} to do on this rank)" in rerun.stderr
    for e in range(epochs):
        name = f"epoch_{e:04d}.pt"
        assert (full / "soft_labels" / name).read_bytes() == (killed / "soft_labels" / name).read_bytes(), name


def test_relabel_resume_redoes_a_damaged_epoch_file(ipc5_images, tiny_teacher, tmp_path):
    """A killed relabel that left a damaged epoch file behind: the resume redoes that epoch
    (a log line names the file) instead of taking it as done, and the result equals an
    uninterrupted run."""
    full = tmp_path / "full"
    _relabel(tiny_teacher, ipc5_images, full, epochs=2)
    killed = tmp_path / "killed"
    _relabel(tiny_teacher, ipc5_images, killed, epochs=2)
    (killed / "manifest.json").unlink()
    damaged = killed / "soft_labels" / "epoch_0001.pt"
    damaged.write_bytes(damaged.read_bytes()[:100])
    rerun = _relabel(tiny_teacher, ipc5_images, killed, epochs=2)
    assert f"{damaged}: cannot load soft-label file" in rerun.stderr and "redoing epoch 1" in rerun.stderr
    assert "(1 to do on this rank)" in rerun.stderr
    assert damaged.read_bytes() == (full / "soft_labels" / "epoch_0001.pt").read_bytes()


def test_top_k_truncation_is_stored_with_indices(tiny_teacher, ipc5_images, tmp_path):
    out = tmp_path / "top3"
    _relabel(tiny_teacher, ipc5_images, out, "--top-k", "3", epochs=1)
    record = torch.load(out / "soft_labels" / "epoch_0000.pt", weights_only=True)
    assert record["values"].shape == (50, 3) and record["indices"].dtype == torch.int16
    plan, dense = SoftLabels(out).epoch(0)
    assert torch.isinf(dense).sum() == 50 * 7
    assert (record["values"][:, 0] >= record["values"][:, 1]).all()


def test_online_teacher_and_hard_label_modes(ipc5_images, cifar_root, tiny_teacher, tmp_path):
    common = ["--images", ipc5_images, "--data-path", cifar_root, "--model", "convnet", "--model-kwargs", "width=16",
              "--epochs", "1", "--batch-size", "10", "--workers", "0"]
    run_module("wmdd.train", *common, "--online-teacher", tiny_teacher, "--output-dir", tmp_path / "online")
    assert json.loads((tmp_path / "online" / "results.json").read_text())["mode"] == "online"
    proc = run_module("wmdd.train", *common, "--hard-labels", "--output-dir", tmp_path / "hard", check=False)
    assert proc.returncode == 2 and "--dataset is required" in proc.stderr
    run_module("wmdd.train", *common, "--hard-labels", "--dataset", "cifar10", "--output-dir", tmp_path / "hard")
    assert json.loads((tmp_path / "hard" / "results.json").read_text())["mode"] == "hard"


def test_torchrun_two_process_train(relabelled, ipc5_images, cifar_root, tmp_path):
    out = tmp_path / "ddp"
    torchrun(2, "wmdd.train", "--images", ipc5_images, "--soft-labels", relabelled, "--data-path", cifar_root,
             "--output-dir", out, "--model", "convnet", "--model-kwargs", "width=16", "--epochs", "2",
             "--batch-size", "10", "--workers", "0")
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["top1"] <= 100 and results["val_images"] == 100
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["images"] == 25  # rank 0's half of every batch


def test_view_settings_and_plan_round_trip(relabelled):
    class Args:
        batch_size, input_size, min_scale_crops, max_scale_crops, mix_type, mix_alpha = 10, 32, 0.5, 0.2, "cutmix", 1.0
    with pytest.raises(UserError, match="crop scales"):
        ViewSettings.from_relabel_args(Args)
    plan = plan_epoch([(32, 32)] * 7, SoftLabels(relabelled).settings, 0, 0)
    back = EpochPlan.from_tensors(plan.to_tensors())
    assert back.num_batches == 1 and torch.equal(back.boxes, plan.boxes) and torch.equal(back.partner, plan.partner)


def test_views_cut_from_images_held_on_the_device_train_the_same_student(relabelled, ipc5_images, cifar_root,
                                                                       tmp_path):
    """--input-pipeline device (the images decoded once, views cut in the training process) replays the
    same recorded views as the DataLoader workers reading the files: the same losses and weights."""
    for pipeline in ("loader", "device"):
        _train(ipc5_images, relabelled, cifar_root, tmp_path / pipeline, "--input-pipeline", pipeline, epochs=2)
    losses = [[json.loads(x)["train_loss"] for x in (tmp_path / p / "metrics.jsonl").read_text().splitlines()]
              for p in ("loader", "device")]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    weights = [torch.load(tmp_path / p / "last.pt", weights_only=True)["model"] for p in ("loader", "device")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
