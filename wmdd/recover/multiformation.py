"""Multi-formation (Kim et al., "Dataset Condensation via Efficient Synthetic-Data
Parameterization", ICML 2022, Sec. 3.1; used by DANCE, Zhang et al., IJCAI 2024):
one stored image holds a ``factor x factor`` grid of tiles at ``1 / factor`` of the
resolution, and each tile is decoded into a full-size training image by bilinear
upsampling. IPC stored images thus give ``factor**2 * IPC`` training images.

The only owner of the layout, shared by the recover stage (initialisation and
the loss, which sees decoded images) and the train stage (``--factor``).

Layout: tile ``k`` of a stored image (``k = row * factor + col``, row-major) covers
rows ``[row * t, (row + 1) * t)`` and columns ``[col * t, (col + 1) * t)`` with
``t = S / factor``. Decoded images are image-major: output ``i * factor**2 + k`` is
tile ``k`` of stored image ``i``, so a class's decoded images stay contiguous.

Deviation from the authors' code (IDC ``Synthesizer.init``/``decode_zoom``, which
DANCE uses): the decoded order there is tile-major (all images' tile 0, then
tile 1, ...), and the initialisation downsamples real images with nearest
neighbour; here :func:`encode` averages each ``factor x factor`` pixel block
(``area``), which aliases less. Decoding is the same bilinear upsampling
(``align_corners=False``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from wmdd.errors import UserError
from wmdd.io.manifest import MANIFEST, recover_record


def tile_side(side: int, factor: int) -> int:
    """Side ``S / factor`` of a tile in pixels.

    Raises:
        UserError: ``factor < 1`` or ``side`` not divisible by ``factor``.
    """
    if factor < 1:
        raise UserError(f"--factor {factor}: the multi-formation factor must be >= 1")
    if side % factor:
        raise UserError(f"--factor {factor}: the image side {side} px is not divisible by it; "
                        "use a factor that divides the input size")
    return side // factor


def decode(stored: torch.Tensor, factor: int) -> torch.Tensor:
    """Decode stored images into training images: IDC's multi-formation decoding (Kim et
    al., ICML 2022, Sec. 3.1; DANCE uses factor 2), each tile bilinearly upsampled to full
    size, in image-major order (IDC's ``decode_zoom``: tile-major).

    Args:
        stored: ``[N, C, S, S]`` float (any space; normalised in this toolkit),
            each holding ``factor x factor`` tiles of side ``S / factor``.
        factor: tiles per side (1: identity).

    Returns:
        ``[N * factor**2, C, S, S]``, same dtype and device, image-major (see the
        module docstring); differentiable w.r.t. ``stored``.

    Raises:
        UserError: ``factor < 1``, or ``S`` not divisible by ``factor``.
    """
    if factor == 1:
        return stored
    n, c, side, _ = stored.shape
    t = tile_side(side, factor)
    tiles = stored.reshape(n, c, factor, t, factor, t).permute(0, 2, 4, 1, 3, 5).reshape(n * factor ** 2, c, t, t)
    return F.interpolate(tiles, size=(side, side), mode="bilinear", align_corners=False)


def encode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """IDC's multi-formation initialisation (Kim et al., ICML 2022, Sec. 3.1), downsampling
    by block averaging where IDC uses nearest neighbour: place every ``factor**2``
    consecutive images, downsampled, in the tiles of one stored image (the inverse layout
    of :func:`decode`).

    Args:
        images: ``[N * factor**2, C, S, S]`` float; images ``i * factor**2 .. (i + 1) *
            factor**2 - 1`` go to stored image ``i``, in row-major tile order.
        factor: tiles per side (1: identity).

    Returns:
        ``[N, C, S, S]``; each tile is the ``factor x factor`` block average of its
        image. ``decode(encode(x))`` therefore equals :func:`downsample_upsample` of ``x``.

    Raises:
        UserError: ``factor < 1``, or ``S`` not divisible by ``factor``.
        ValueError: the number of images is not a multiple of ``factor**2``.
    """
    if factor == 1:
        return images
    total, c, side, _ = images.shape
    t = tile_side(side, factor)
    if total % factor ** 2:
        raise ValueError(f"encode needs a multiple of {factor ** 2} images, got {total}")
    n = total // factor ** 2
    small = F.interpolate(images, size=(t, t), mode="area")
    return small.reshape(n, factor, factor, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(n, c, side, side)


def downsample_upsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """``[N, C, S, S]`` -> the same images at the tile resolution and back:
    ``factor x factor`` block average, then bilinear upsampling to ``S`` (what an
    image goes through when it is encoded into a tile and decoded: IDC's multi-formation,
    Kim et al., ICML 2022, Sec. 3.1). Same dtype and device.

    Raises:
        UserError: ``factor < 1``, or ``S`` not divisible by ``factor``.
    """
    side = images.shape[-1]
    small = F.interpolate(images, size=(tile_side(side, factor),) * 2, mode="area")
    return F.interpolate(small, size=(side, side), mode="bilinear", align_corners=False)


def recorded_factor(images_dir: str | Path) -> int:
    """The multi-formation factor of a distilled set: what the recover run that
    wrote ``images_dir`` recorded in its ``manifest.json`` next to the folder
    (``"factor"``); 1 when there is no such manifest or it records none.

    Raises:
        UserError: the manifest is unreadable (:func:`wmdd.io.manifest.recover_record`).
    """
    return int(recover_record(images_dir).get("factor", 1))


def refuse_tiled(images_dir: str | Path, stage: str) -> None:
    """Refuse a multi-formation set where whole images are expected (the FKD views of
    relabel and ``train --protocol fkd`` are cut from whole images, not tiles).

    Raises:
        UserError: ``recorded_factor(images_dir) > 1``, naming the decode command.
    """
    factor = recorded_factor(images_dir)
    if factor > 1:
        raise UserError(f"{images_dir}: stored with multi-formation factor {factor} "
                        f"({Path(images_dir).parent / MANIFEST}); {stage} cuts its views from whole images. "
                        f"Decode the tiles first: python -m wmdd.tools.decode_images --images {images_dir} "
                        f"--output-dir DIR, then pass --images DIR/images")
