"""DANCE on real CIFAR-10: experts (``python -m wmdd.pretrain --experts``), middle encoders,
multi-formation, the dance evaluation preset and bad input.

CPU reductions (tests/conftest.py ``EXPERT_FLAGS``): 2-3 experts of 1 epoch at batch
32 on 20 images per class (paper: 20 experts, 60 epochs, batch 64, full split)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import EXPERT_FLAGS, kill_when, run_module, torchrun
from wmdd.data.datasets import get_spec
from wmdd.data.folders import image_folder, load_image, split_dir
from wmdd.data.transforms import eval_transform
from wmdd.models.experts import interpolate_state, load_experts
from wmdd.options.config import parse_with_config
from wmdd.recover.methods.dance import load_middle_encoder, pixel_space_gradient
from wmdd.recover.multiformation import decode, encode
from wmdd.relabel.views import cutmix_batch
from wmdd.train.protocols import PROTOCOLS
from wmdd.train.student import build_parser

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _real(cifar_root, per_class: int) -> tuple[torch.Tensor, list[int]]:
    """The first ``per_class`` real train images of each class, normalised ``[10 n, 3, 32, 32]``."""
    spec = get_spec("cifar10")
    folder = image_folder(split_dir(cifar_root, "train"), eval_transform(spec, 32))
    picks = [i for c in range(10) for i in [j for j, t in enumerate(folder.targets) if t == c][:per_class]]
    return torch.stack([folder[i][0] for i in picks]), [folder.targets[i] for i in picks]


def test_experts_artifact_holds_initial_and_final_weights(experts):
    loaded = load_experts(experts)
    assert len(loaded) == 2 and loaded.name == "convnet_in" and loaded.input_size == 32
    assert loaded.classes[0] == "airplane" and len(loaded.classes) == 10
    for init, final in zip(loaded.init, loaded.final):
        assert init.keys() == final.keys()
        assert not torch.equal(init["classifier.weight"], final["classifier.weight"])
    assert not torch.equal(loaded.init[0]["features.0.weight"], loaded.init[1]["features.0.weight"])
    manifest = json.loads((experts / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and "experts.pt" in manifest["outputs"] and manifest["experts"] == 2
    assert not (experts / "progress").exists()
    lines = [json.loads(x) for x in (experts / "metrics.jsonl").read_text().splitlines()]
    assert [(x["expert"], x["epoch"]) for x in lines] == [(0, 0), (1, 0)]
    assert all(x["seconds"] > 0 for x in lines) and manifest["seconds_per_expert"] > 0
    raw = torch.load(experts / "experts.pt", map_location="cpu", weights_only=True)
    assert raw["args"]["epochs"] == 1 and raw["args"]["lr"] == 0.01 and raw["args"]["cutmix_prob"] == 0.5


def test_middle_encoder_at_lambda_0_and_1_is_the_final_and_the_initial_expert(experts):
    loaded = load_experts(experts)
    net = loaded.network()
    for lam, want in ((0.0, loaded.final[1]), (1.0, loaded.init[1])):
        state = load_middle_encoder(net, loaded, 1, lam).state_dict()
        assert all(torch.equal(state[k], want[k]) for k in want)


def test_interpolation_of_a_bn_free_convnet_is_exact(experts, cifar_root):
    loaded = load_experts(experts)
    net = loaded.network()
    assert not list(net.buffers())  # instance norm: every entry of the state dict is a parameter
    lam = 0.3
    load_middle_encoder(net, loaded, 0, lam)
    for name, p in net.named_parameters():
        want = lam * loaded.init[0][name] + (1 - lam) * loaded.final[0][name]
        assert torch.equal(p, want), name
    x, _ = _real(cifar_root, 1)
    final = loaded.network()
    with torch.no_grad():
        assert torch.equal(load_middle_encoder(net, loaded, 0, 0.0)(x), final(x))
    ints = interpolate_state({"n": torch.tensor(3)}, {"n": torch.tensor(7)}, 0.5)
    assert ints["n"].item() == 7  # integer buffers come from the trained expert


def test_multiformation_decodes_four_ipc_images_per_class_at_the_tile_resolution(cifar_root):
    ipc = 2
    x, labels = _real(cifar_root, 4 * ipc)
    stored = encode(x, 2)
    assert stored.shape == (10 * ipc, 3, 32, 32)
    decoded = decode(stored, 2)
    assert decoded.shape == (10 * 4 * ipc, 3, 32, 32)
    assert torch.equal(torch.tensor(labels).view(10, -1)[:, 0].repeat_interleave(4 * ipc), torch.tensor(labels))
    small = F.avg_pool2d(x, 2)
    for i in range(len(stored)):
        for k in range(4):
            r, c = divmod(k, 2)
            assert torch.allclose(stored[i, :, 16 * r:16 * (r + 1), 16 * c:16 * (c + 1)], small[4 * i + k], atol=1e-6)
    expected = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(decoded, expected, atol=1e-6)
    assert torch.equal(decode(stored, 1), stored) and torch.equal(encode(x, 1), x)


def test_pixel_gradient_is_scaled_to_the_authors_0_1_pixel_units():
    std = torch.tensor(get_spec("cifar10").std).view(1, 3, 1, 1)
    x = torch.zeros(2, 3, 4, 4, requires_grad=True)
    y = pixel_space_gradient(x, std)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, (1 / std.square()).expand(2, 3, 4, 4))


def test_cutmix_with_probability_0_draws_nothing_and_mixes_nothing():
    x = torch.randn(6, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    views, partner, lam = cutmix_batch(x, 0.0, generator)
    assert views is x and torch.equal(partner, torch.arange(6)) and lam == 1.0
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())
    views, partner, lam = cutmix_batch(x, 1.0, generator)
    assert 0 <= lam <= 1 and sorted(partner.tolist()) == list(range(6))
    pasted = (views != x).any(dim=1)
    assert abs(pasted[partner != torch.arange(6)].float().mean().item() - (1 - lam)) < 1e-6


def test_dance_protocol_is_the_dsa_protocol_with_cutmix_and_multiformation():
    dance = parse_with_config(build_parser(), ["--protocol", "dance"], "train", variant="protocol",
                              variant_defaults=PROTOCOLS.defaults())
    dsa = parse_with_config(build_parser(), ["--protocol", "dsa"], "train", variant="protocol",
                            variant_defaults=PROTOCOLS.defaults())
    assert (dance.cutmix_prob, dance.epochs, dance.batch_size) == (0.5, 1500, 64)
    assert (dsa.cutmix_prob, dsa.epochs, dsa.batch_size, dsa.lr_scheduler) == (0.0, 1000, 256, "half")
    assert dance.factor is None and dsa.factor is None  # the set's recorded factor (train.student.resolve_factor)
    assert dance.model == dsa.model == "convnet_in" and dance.lr == dsa.lr == 0.01


def test_dance_set_trains_under_the_dance_protocol(experts, cifar_root, tmp_path):
    rec = tmp_path / "recover"
    run_module("wmdd.recover", "--method", "dance", "--experts", experts, "--num-experts", "2", "--dataset", "cifar10",
               "--data-path", cifar_root, "--output-dir", rec, "--workers", "0", "--ipc", "1", "--batch-size", "10",
               "--iterations", "2", "--batch-real", "8", env=ONE_THREAD)
    manifest = json.loads((rec / "manifest.json").read_text())
    assert manifest["factor"] == 2 and manifest["decoded_images"] == 40 and manifest["num_images"] == 10
    assert manifest["inputs"]["experts"]["sha256"] == load_experts(experts).sha256
    out = tmp_path / "train"
    run_module("wmdd.train", "--protocol", "dance", "--images", rec / "images", "--dataset", "cifar10", "--data-path",
               cifar_root, "--output-dir", out, "--workers", "0", "--epochs", "2", "--batch-size", "16",
               env=ONE_THREAD)
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "dance" and 0 <= results["top1"] <= 100
    assert (results["num_images"], results["training_images"]) == (10, 40)  # 10 stored, decoded into 4 each
    assert json.loads((out / "manifest.json").read_text())["args"]["factor"] == 2
    proc = run_module("wmdd.train", "--protocol", "dsa", "--factor", "1", "--images", rec / "images", "--dataset",
                      "cifar10", "--data-path", cifar_root, "--output-dir", tmp_path / "no-decode", "--workers", "0",
                      check=False)
    assert proc.returncode == 2 and "stored with multi-formation factor 2" in proc.stderr
    assert "pass --factor 2" in proc.stderr and not (tmp_path / "no-decode" / "manifest.json").exists()
    data = ["--dataset", "cifar10", "--data-path", cifar_root]
    for module, flags in (("relabel", ["--teacher", tmp_path / "no-teacher"]), ("train", ["--hard-labels", *data])):
        proc = run_module(f"wmdd.{module}", "--images", rec / "images", "--output-dir", tmp_path / f"fkd-{module}",
                          *flags, check=False)
        assert proc.returncode == 2 and "stored with multi-formation factor 2" in proc.stderr, proc.stderr
        assert "python -m wmdd.tools.decode_images" in proc.stderr and not (tmp_path / f"fkd-{module}").exists()

    decoded = tmp_path / "decoded"
    run_module("wmdd.tools.decode_images", "--images", rec / "images", "--output-dir", decoded)
    spec = get_spec("cifar10")
    manifest = json.loads((decoded / "manifest.json").read_text())
    assert (manifest["stage"], manifest["source_factor"], manifest["num_images"]) == ("decode", 2, 40)
    to_float = eval_transform(spec, 32)
    stored = torch.stack([to_float(load_image(str(p))) for p in sorted((rec / "images").glob("*/*.png"))])
    files = sorted((decoded / "images").glob("*/*.png"))
    assert [f.parent.name for f in files] == [c for c in manifest["classes"] for _ in range(4)]
    written = torch.stack([to_float(load_image(str(p))) for p in files])
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    assert ((written - decode(stored, 2)) * std).abs().max() <= 0.5 / 255 + 1e-5  # 8-bit rounding only
    out = tmp_path / "fkd-decoded"
    run_module("wmdd.train", "--hard-labels", "--images", decoded / "images", "--dataset", "cifar10", "--data-path",
               cifar_root, "--output-dir", out, "--workers", "0", "--epochs", "1", "--batch-size", "20",
               env=ONE_THREAD)
    assert json.loads((out / "results.json").read_text())["protocol"] == "fkd"
    proc = run_module("wmdd.tools.decode_images", "--images", decoded / "images", "--output-dir", tmp_path / "again",
                      check=False)
    assert proc.returncode == 2 and "not a multi-formation set" in proc.stderr
    proc = run_module("wmdd.tools.decode_images", "--images", rec / "images", "--output-dir", rec / "decoded",
                      check=False)
    assert proc.returncode == 2 and "inside the recover run" in proc.stderr and not (rec / "decoded").exists()
    proc = run_module("wmdd.tools.decode_images", "--images", tmp_path / "none" / "images", "--output-dir",
                      tmp_path / "d2", check=False)
    assert proc.returncode == 2 and "not a multi-formation set" not in proc.stderr and "none" in proc.stderr
    # An --output-dir whose images/ another tool wrote is refused, and left as it was.
    foreign = tmp_path / "foreign"
    (foreign / "images" / "cat").mkdir(parents=True)
    (foreign / "images" / "cat" / "mine.png").write_bytes(b"a user's file")
    proc = run_module("wmdd.tools.decode_images", "--images", rec / "images", "--output-dir", foreign, check=False)
    assert proc.returncode == 2 and "images already exists and was not written by wmdd decode" in proc.stderr
    assert [p.name for p in foreign.rglob("*")] == ["images", "cat", "mine.png"]
    assert (foreign / "images" / "cat" / "mine.png").read_bytes() == b"a user's file"


def test_random_real_with_factor_2_is_dance_s_starting_point(cifar_root, tmp_path):
    rec = tmp_path / "rr-f2"
    run_module("wmdd.recover", "--method", "random-real", "--factor", "2", "--dataset", "cifar10", "--data-path",
               cifar_root, "--output-dir", rec, "--workers", "0", "--ipc", "2")
    manifest = json.loads((rec / "manifest.json").read_text())
    assert (manifest["factor"], manifest["decoded_images"], manifest["num_images"]) == (2, 80, 20)
    spec = get_spec("cifar10")
    to_float = eval_transform(spec, 32)
    sources = pd.read_csv(rec / "sources.csv")
    assert len(sources) == 80 and sources["source_path"].is_unique
    real = torch.stack([to_float(load_image(str(cifar_root / "train" / p))) for p in sources["source_path"]])
    stored = torch.stack([to_float(load_image(str(rec / "images" / p))) for p in sources["image_path"][::4]])
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    assert ((stored - encode(real, 2)) * std).abs().max() <= 0.5 / 255 + 1e-5


def _dance(experts_path, cifar_root, out, *extra):
    return run_module("wmdd.recover", "--method", "dance", "--experts", experts_path, "--dataset", "cifar10",
                      "--data-path", cifar_root, "--output-dir", out, "--workers", "0", "--ipc", "1",
                      "--iterations", "1", "--num-experts", "2", *extra, check=False, env=ONE_THREAD)


def _edited(experts, tmp_path, edit) -> str:
    data = torch.load(experts / "experts.pt", map_location="cpu", weights_only=True)
    edit(data)
    path = tmp_path / "edited" / "experts.pt"
    path.parent.mkdir()
    torch.save(data, path)
    return str(path.parent)


def _fewer_classes(data):
    data["classes"] = data["classes"][:5]
    data["model"]["num_classes"] = 5


def _other_size(data):
    data["model"]["input_size"] = 28


@pytest.mark.parametrize("case,expect", [
    ("missing", "experts.pt: experts file not found"),
    ("truncated", "cannot load experts"),
    ("random bytes", "experts.pt: cannot load experts (UnpicklingError: "),
    ("class count", ("experts were trained on 5 classes, DATA has 10; add --classes 5 (the experts' classes are "
                     "the first 5)")),
    ("input size", "experts were trained at 28 px, this run uses 32 px"),
    ("no experts flag", "--method dance needs --experts DIR"),
    ("too many experts", "--num-experts 3"),
])
def test_bad_experts_are_refused_without_a_manifest(case, expect, experts, cifar_root, tmp_path):
    path, extra = str(experts), []
    if case == "missing":
        path = str(tmp_path)
    elif case == "truncated":
        (tmp_path / "cut").mkdir()
        blob = (experts / "experts.pt").read_bytes()
        (tmp_path / "cut" / "experts.pt").write_bytes(blob[:len(blob) // 2])
        path = str(tmp_path / "cut")
    elif case == "random bytes":
        (tmp_path / "noise").mkdir()
        (tmp_path / "noise" / "experts.pt").write_bytes(np.random.default_rng(0).bytes(5000))
        path = str(tmp_path / "noise")
    elif case == "class count":
        path = _edited(experts, tmp_path, _fewer_classes)
    elif case == "input size":
        path = _edited(experts, tmp_path, _other_size)
    elif case == "too many experts":
        extra = ["--num-experts", "3"]
    out = tmp_path / "out"
    if case == "no experts flag":
        proc = run_module("wmdd.recover", "--method", "dance", "--dataset", "cifar10", "--data-path", cifar_root,
                          "--output-dir", out, check=False)
    else:
        proc = _dance(path, cifar_root, out, *extra)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expect.replace("DATA", str(cifar_root / "train")) in last, proc.stderr
    assert "Traceback" not in proc.stderr and "weights_only" not in proc.stderr
    assert not out.exists()  # refused before the first file is written


def test_zero_experts_is_refused(cifar_root, tmp_path):
    out = tmp_path / "out"
    proc = run_module("wmdd.pretrain", "--experts", "0", "--data-path", cifar_root, "--output-dir", out, check=False)
    assert proc.returncode == 2 and "argument --experts: '0' is out of range: expected an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def _experts_content(path):
    data = torch.load(path / "experts.pt", map_location="cpu", weights_only=True)
    return data["experts"]


def _same_experts(a, b):
    a, b = _experts_content(a), _experts_content(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x["index"], x["seed"], x["val"]) == (y["index"], y["seed"], y["val"])
        for part in ("init", "final"):
            assert all(torch.equal(x[part][k], y[part][k]) for k in x[part]), part


def test_pretrain_experts_resume_after_sigkill_at_the_expert_being_trained(cifar_root, tmp_path):
    flags = [f if f != "2" else "3" for f in EXPERT_FLAGS]
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_module("wmdd.pretrain", *flags, "--data-path", cifar_root, "--output-dir", full, env=ONE_THREAD)
    cmd = [sys.executable, "-m", "wmdd.pretrain", *flags, "--data-path", str(cifar_root), "--output-dir", str(killed)]
    kill_when(cmd, killed / "progress" / "expert_0000.pt", ONE_THREAD)
    assert not (killed / "manifest.json").exists() and not (killed / "experts.pt").exists()
    done = len(list((killed / "progress").glob("expert_*.pt")))
    assert 1 <= done < 3
    resumed = run_module("wmdd.pretrain", *flags, "--data-path", cifar_root, "--output-dir", killed, env=ONE_THREAD)
    assert f"{3 - done} to do on this rank" in resumed.stderr
    _same_experts(full, killed)


def test_pretrain_experts_under_two_rank_torchrun_equal_one_rank(experts, cifar_root, tmp_path):
    out = tmp_path / "ddp"
    torchrun(2, "wmdd.pretrain", *EXPERT_FLAGS, "--data-path", cifar_root, "--output-dir", out)
    _same_experts(experts, out)
