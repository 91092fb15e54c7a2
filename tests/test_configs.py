"""The shipped YAML presets in configs/ are valid for every stage they configure."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from wmdd.data.datasets import get_spec
from wmdd.errors import UserError
from wmdd.options.config import STAGES, config_defaults, load_yaml_section

PARSER_MODULES = {"pretrain": "wmdd.pretrain.__main__", "recover": "wmdd.recover.options",
                  "relabel": "wmdd.relabel.__main__",
                  "train": "wmdd.train.student"}
VARIANTS = {"recover": "method", "train": "protocol"}
PRESETS = sorted((Path(__file__).resolve().parents[1] / "wmdd" / "configs").glob("*.yaml"))


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"cifar10", "cifar100", "digits", "imagenette", "tiny-imagenet"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_keys_are_stage_options(preset):
    """A key a stage's parser does not know would stop every run that uses the preset."""
    data = yaml.safe_load(preset.read_text())
    assert set(data) <= set(STAGES), preset
    for stage in data:
        parser = importlib.import_module(PARSER_MODULES[stage]).build_parser()
        section = load_yaml_section(preset, stage)
        variants = {k: v for k, v in section.items() if isinstance(v, dict)}
        plain = {k: v for k, v in section.items() if k not in variants}
        variant = VARIANTS.get(stage)
        assert config_defaults(parser, preset, stage, variant) == plain
        for choice, settings in variants.items():
            assert config_defaults(parser, preset, stage, variant, choice) == {**plain, **settings}
    assert get_spec(data["pretrain"]["dataset"]).name == preset.stem


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_large_image_presets_leave_jitter_to_scale(preset):
    """At 224 px a fixed jitter (WMDD's 32 px) would be a full roll at --input-size 32;
    presets of large-image datasets leave it to the input-size rule."""
    spec = get_spec(yaml.safe_load(preset.read_text())["pretrain"]["dataset"])
    if spec.image_size >= 64:
        section = load_yaml_section(preset, "recover")
        assert "jitter" not in section
        assert all("jitter" not in v for v in section.values() if isinstance(v, dict))


@pytest.mark.parametrize("text,expect", [
    ("recover:\n  iterations: null\n", {"iterations": None}),  # null leaves the option unset
    ("recover:\n  lr: 1.0e+400\n", "setting 'lr': inf is out of range: expected a number > 0"),
    ("recover:\n  seed: 99999999999999999999\n", "expected an integer in [0, 2147483647]"),
    ("train:\n  lr_scheduler: bogus\n", "setting 'lr_scheduler': 'bogus' is not one of"),  # dest shared with --cos
])
def test_yaml_values_are_checked_like_the_command_line(tmp_path, text, expect):
    stage = text.split(":")[0]
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    parser = importlib.import_module(PARSER_MODULES[stage]).build_parser()
    if isinstance(expect, dict):
        assert config_defaults(parser, path, stage, VARIANTS.get(stage)) == expect
    else:
        with pytest.raises(UserError, match=re.escape(f"{path}: {stage} ") + ".*" + re.escape(expect)):
            config_defaults(parser, path, stage, VARIANTS.get(stage))


def test_precision_switches_from_yaml_are_booleans_and_unset_means_cpu_off(tmp_path):
    """--amp / --channels-last (on/off switches, unset = on with CUDA) take YAML true/false and refuse
    a string; left unset they resolve to off on the CPU."""
    from wmdd.options.config import resolve_precision
    from wmdd.pretrain.__main__ import parse_args

    flags = ["--data-path", "d", "--output-dir", "o", "--device", "cpu"]
    good = tmp_path / "good.yaml"
    good.write_text("pretrain:\n  amp: true\n  channels_last: false\n")
    args = resolve_precision(parse_args(["--config", str(good), *flags]))
    assert (args.amp, args.channels_last) == (True, False)
    assert (resolve_precision(parse_args(flags)).amp, parse_args(["--no-amp", *flags]).amp) == (False, False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  amp: 'false'\n")
    with pytest.raises(UserError, match=r"bad.yaml.*'false' is not true or false"):
        parse_args(["--config", str(bad), *flags])
