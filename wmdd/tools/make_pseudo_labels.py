"""``python -m wmdd.tools.make_pseudo_labels``: a pseudo-label CSV from any checkpoint's features.

The checkpoint (a teacher.pt or a plain state dict with ``--model``) embeds
every train image (penultimate features, evaluation transform); scikit-learn's
KMeans (seeded) groups them into K clusters (default: the number of classes);
clusters are mapped to class indices with the Hungarian algorithm (scipy
``linear_sum_assignment``) on the cluster/folder-label contingency table, or
``--no-mapping`` keeps the cluster id as the label. Columns:
``image_path,cluster_id,pseudo_label_class_index,true_label_index,correct,confidence``
with ``image_path`` relative to the dataset root and ``confidence`` the soft
assignment ``softmax(-d_k / mean(d))`` of the image to its cluster (d: squared
distances to the centres).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from wmdd.data.datasets import resolve_spec
from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import eval_transform
from wmdd.errors import UserError
from wmdd.io.files import atomic_write_bytes, check_output_dir
from wmdd.models import parse_model_kwargs
from wmdd.models.teacher import load_any_teacher
from wmdd.options.bounds import COUNT, NON_NEGATIVE_INT, SEED
from wmdd.options.parsing import StageParser, run_main
from wmdd.recover.features import extract_features
from wmdd.runtime.distributed import resolve_device

log = logging.getLogger("wmdd.tools")


def hungarian_mapping(clusters: np.ndarray, labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Cluster -> class map ``[k]`` maximising the number of images whose cluster maps
    to their folder label (Hungarian algorithm on the contingency table).

    Raises:
        UserError: more clusters than classes (a class would get two clusters).
    """
    if k > num_classes:
        raise UserError(f"--clusters {k} is more than the {num_classes} classes; lower it or pass --no-mapping")
    table = np.zeros((k, num_classes), dtype=np.int64)
    np.add.at(table, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = np.empty(k, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def soft_confidence(distances: np.ndarray, assigned: np.ndarray) -> np.ndarray:
    """``softmax(-d / mean(d))[assigned]`` per row of squared distances ``[N, k]``."""
    scaled = -distances / max(float(distances.mean()), 1e-12)
    scaled -= scaled.max(axis=1, keepdims=True)
    p = np.exp(scaled)
    p /= p.sum(axis=1, keepdims=True)
    return p[np.arange(len(p)), assigned]


def build_parser() -> argparse.ArgumentParser:
    p = StageParser(prog="wmdd pseudo-labels", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="teacher.pt / pretrain directory, or a plain state dict")
    p.add_argument("--data-path", required=True, help="dataset root holding train/")
    p.add_argument("--output", required=True, help="CSV to write")
    p.add_argument("--dataset", default="imagefolder", help="dataset spec for a plain state dict")
    p.add_argument("--model", default="resnet18", help="architecture of a plain state dict")
    p.add_argument("--model-kwargs", nargs="*", default=[])
    p.add_argument("--input-size", type=COUNT)
    p.add_argument("--clusters", type=COUNT, help="K (default: number of classes)")
    p.add_argument("--no-mapping", action="store_true", help="label = cluster id (no Hungarian mapping)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=COUNT, default=256)
    p.add_argument("--workers", type=NON_NEGATIVE_INT, default=2)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    if output.is_dir():
        raise UserError(f"--output {output}: is a directory; pass the CSV file to write, "
                        f"e.g. {output / 'pseudo_labels.csv'}")
    check_output_dir(output.parent, "--output's folder")
    device = resolve_device(args.device)
    folder = image_folder(split_dir(args.data_path, "train"))
    teacher = load_any_teacher(args.checkpoint, model=args.model,
                               kwargs=parse_model_kwargs(args.model, args.model_kwargs),
                               spec=resolve_spec(args.dataset, folder.classes, args.data_path), classes=folder.classes,
                               input_size=args.input_size, device=device)
    if teacher.classes != folder.classes:
        raise UserError(f"{args.data_path}: class folders differ from the checkpoint's classes ({teacher.path})")
    folder.transform = eval_transform(teacher.spec, teacher.input_size)
    features, labels = extract_features(teacher, folder, device, args.batch_size, args.workers)
    x, y = features.double().numpy(), labels.numpy()
    k = args.clusters or len(folder.classes)
    if not args.no_mapping and k > len(folder.classes):
        raise UserError(f"--clusters {k} is more than the {len(folder.classes)} classes; pass --no-mapping")
    if args.no_mapping and k > len(folder.classes):
        raise UserError(f"--clusters {k}: cluster ids are used as labels and must be < {len(folder.classes)} classes")
    km = KMeans(n_clusters=k, n_init=3, random_state=args.seed).fit(x)
    clusters = km.labels_
    mapping = np.arange(k) if args.no_mapping else hungarian_mapping(clusters, y, k, len(folder.classes))
    pseudo = mapping[clusters]
    distances = ((x[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)
    root = Path(args.data_path)
    table = pd.DataFrame({
        "image_path": [str(Path(p).resolve().relative_to(root.resolve())) for p, _ in folder.samples],
        "cluster_id": clusters, "pseudo_label_class_index": pseudo, "true_label_index": y,
        "correct": (pseudo == y).astype(int), "confidence": np.round(soft_confidence(distances, clusters), 6)})
    atomic_write_bytes(args.output, table.to_csv(index=False).encode())
    log.info("wrote %s: %d images, %d clusters, agreement with folder labels %.2f%%", args.output, len(table), k,
             100.0 * table["correct"].mean())
    return 0


if __name__ == "__main__":
    run_main(main)
