"""``python -m wmdd.tools.decode_images --images RECOVER_OUT/images --output-dir OUT``:
write the training images of a multi-formation set (DANCE, ``random-real
--factor F``) as an ordinary distilled set, for the FKD protocol (relabel and
``train --protocol fkd`` cut their views from whole images, so they refuse
tiled sets).

Every stored image is decoded into its ``F**2`` full-size images exactly as
``train --protocol dsa --factor F`` decodes it in memory
(:func:`wmdd.recover.multiformation.decode`, bilinear), then saved as 8-bit PNGs:
``OUT/images/<class>/0000.png ...`` in image-major order (stored image ``i``,
tile ``k`` -> image ``i * F**2 + k``), ``OUT/sample_weights.csv`` (each stored
image's weight repeated for its tiles), ``OUT/grid.png`` and, last,
``OUT/manifest.json`` (stage ``decode``; the recover manifest as input, the
source factor, the image counts). The decoded set holds ``F**2`` times the
stored images: the pixel budget is the stored set's, the number of training
images (and of soft labels, after relabel) is not.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from wmdd.data.datasets import DatasetSpec
from wmdd.errors import UserError
from wmdd.io.files import atomic_write_json, sha256_file
from wmdd.io.lock import lock_output_dir
from wmdd.io.manifest import (
    MANIFEST,
    RUN_ARGS,
    finished_with_same_args,
    jsonable,
    read_manifest,
    write_manifest,
    write_set_record,
)
from wmdd.options.parsing import StageParser, run_main
from wmdd.recover.images import save_class_images, write_grid, write_sample_weights
from wmdd.recover.multiformation import recorded_factor
from wmdd.train.data import load_decoded, load_image_set, load_sample_weights

log = logging.getLogger("wmdd.decode")
OUTPUTS = ["images", "sample_weights.csv", "grid.png"]


def build_parser() -> argparse.ArgumentParser:
    p = StageParser(prog="wmdd decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="the multi-formation set: a recover run's OUT/images")
    p.add_argument("--output-dir", required=True, help="where the decoded set goes (OUT/images, manifest)")
    return p


def decode_set(images_dir: Path, out: Path) -> dict:
    """Decode the set in ``images_dir`` into ``out`` and return its manifest.

    A previous partial output of a decode in ``out`` (a killed run, recognised by its
    recorded arguments) is replaced; anything else already in ``out/images`` is refused.

    Raises:
        UserError: ``images_dir`` is not an image folder, not a multi-formation set
            (factor 1), its recover manifest is missing or its files changed, its
            classes hold different numbers of images, ``out`` is inside the
            recover run's directory, ``out/images`` exists but was not written by wmdd decode
            (no recorded arguments beside it), or another process is writing to ``out``.
    """
    images = load_image_set(images_dir)
    factor = recorded_factor(images_dir)
    if factor == 1:
        raise UserError(f"{images_dir}: not a multi-formation set (no factor > 1 in "
                        f"{images_dir.parent / MANIFEST}); relabel and train use it as it is")
    source = images_dir.parent.resolve()
    if out.resolve() == source or source in out.resolve().parents:
        raise UserError(f"--output-dir {out}: inside the recover run {source}; pass a directory outside it "
                        f"(e.g. {source.parent / 'decoded'})")
    recover = read_manifest(images_dir.parent, "recover")
    spec = DatasetSpec.from_dict(recover["dataset"])
    counts = torch.bincount(images.labels, minlength=len(images.classes))
    if len(set(counts.tolist())) != 1:
        raise UserError(f"{images_dir}: classes hold different numbers of images ({counts.tolist()}); "
                        "decode a set written by one recover run")
    if (out / "images").exists() and not (out / RUN_ARGS).is_file():
        raise UserError(f"--output-dir {out}: {out / 'images'} already exists and was not written by wmdd decode; "
                        "pass a new or empty directory (nothing there was changed)")
    lock_output_dir(out, "decode")
    # decode never resumes part-way: an unfinished decode's output (of this set, or of a set since
    # remade in the same place) is replaced
    atomic_write_json(out / RUN_ARGS, jsonable(run_args(images_dir)))
    shutil.rmtree(out / "images", ignore_errors=True)
    weights_csv = images_dir.parent / "sample_weights.csv"
    weights = load_sample_weights(weights_csv, images) if weights_csv.is_file() else torch.ones(len(images.paths))
    tiles = factor ** 2
    for k, name in enumerate(images.classes):
        paths = [p for p, y in zip(images.paths, images.labels.tolist()) if y == k]
        save_class_images(load_decoded(paths, spec, recover["input_size"], factor), spec, out / "images" / name)
    per_class = int(counts[0]) * tiles
    write_sample_weights(out / "sample_weights.csv", images.classes,
                         weights.repeat_interleave(tiles).view(len(images.classes), per_class))
    write_set_record(out / "images", stage="decode", factor=1, input_size=recover["input_size"])
    write_grid(out / "images", images.classes, out / "grid.png")
    return write_manifest(out, stage="decode", args=run_args(images_dir),
                          outputs=OUTPUTS, dataset=recover["dataset"], classes=images.classes,
                          inputs={"recover_manifest": images_dir.parent / MANIFEST},
                          extra={"source_factor": factor, "method": recover.get("method"),
                                 "ipc": recover.get("ipc"), "decoded_per_class": per_class,
                                 "input_size": recover["input_size"],
                                 "num_images": per_class * len(images.classes)})


def run_args(images_dir: Path) -> dict:
    """What defines a decode run: the source folder and the sha256 of its recover
    manifest (which lists every stored image's sha256), so that a set re-made in the
    same place is decoded again."""
    manifest = images_dir.parent / MANIFEST
    return {"images": str(images_dir), "recover_manifest_sha256": sha256_file(manifest) if manifest.is_file() else None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    images_dir, out = Path(args.images), Path(args.output_dir)
    if finished_with_same_args(out, "decode", run_args(images_dir)):
        return 0
    manifest = decode_set(images_dir, out)
    log.info("decoded %s (factor %d) into %d images in %s", images_dir, manifest["source_factor"],
             manifest["num_images"], out / "images")
    return 0


if __name__ == "__main__":
    run_main(main)
