"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, "Dataset Condensation
with Differentiable Siamese Augmentation", ICML 2021), as used by Distribution
Matching (DM; Zhao & Bilen, WACV 2023) and its descendants.

Semantics follow the authors' ``DiffAugment`` with ``aug_mode='S'``
(VICO-UoE/DatasetCondensation, ``utils.py``): every call picks ONE transform
family uniformly from the ``_``-separated parts of the strategy string and
applies it with random parameters; ``color`` is one family applying
brightness, then saturation, then contrast. In DM the same parameters are used
for a class's real batch and its synthetic batch (*siamese*: :func:`siamese`);
the DSA training protocol draws parameters per image (:func:`augment`).

Images are float tensors ``[N, C, S, S]`` in normalised space (values may be
negative); nothing is clamped. Every transform is differentiable with respect
to the pixels. All randomness comes from the ``torch.Generator`` passed in,
never from the global RNG, so a seeded generator reproduces the draws.

What is built from library ops and what is not:

* flip is ``torchvision.transforms.v2.functional.horizontal_flip``.
* the integer translation ("crop") and cutout are written here as two
  gathers and a mask (zero fill, exactly DSA's one-pixel zero pad plus
  clamped gather, and its zeroed square): ``v2.functional.crop``/``erase``
  take one box per call, so per-image draws would cost one call per image,
  and a batch's augmentation is meant to be a fixed number of operations
  whatever its size (one GPU launch per operation, not per image or class).
* scale and rotate are ``torch.nn.functional.affine_grid`` + ``grid_sample``
  (bilinear, zero padding, ``align_corners=True``: the authors' code targets
  torch 1.2, whose two functions behaved as ``align_corners=True``).
  ``v2.functional.affine``/``rotate`` take one isotropic scale and one angle
  per call, which cannot express DSA's per-image anisotropic ``sx != sy``.
* the three colour ops are one-line formulas: ``v2.functional.adjust_*`` are
  multiplicative, grayscale-weighted and clamp to [0, 1], unlike DSA's
  definitions, which act additively / around unweighted means in normalised
  space.

Only the parameter drawing, the siamese sharing (per batch, :func:`siamese`, or
per class of a batch in one call, :func:`draw_per_class` and
:func:`siamese_per_class`), the translation and the cutout are written here.

Differences from the authors' code, none of which changes the distribution
of the augmented images:

* randomness comes from a passed generator instead of re-seeding the global
  RNG before each draw, so the numbers differ from DSA's for the same seed;
* ``crop`` is written as a content shift (``dx``, ``dy``) where DSA gathers
  ``x[r + tx, c + ty]``: the same symmetric shift range, opposite sign;
* ``align_corners=True`` is passed explicitly (see above);
* an unknown family, or DSA's ``'none'``/empty strategy (identity there), is
  a :class:`UserError` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as tvf

from wmdd.data.transforms import shift_images
from wmdd.errors import UserError
from wmdd.recover.grouping import class_index

#: Transform families a strategy string may name.
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """The strategy and magnitudes of DSA (Zhao & Bilen, ICML 2021; no equation number on
    record); defaults: the authors' ``ParamDiffAug``.

    Attributes:
        strategy: ``_``-separated families from :data:`FAMILIES`; each call
            picks one part uniformly (a repeated part is picked more often).
        brightness: additive offset ``(u - 0.5) * brightness``, u ~ U(0, 1).
        saturation: factor ``u * saturation`` on the deviation from the
            per-pixel mean over channels.
        contrast: factor ``u + contrast`` on the deviation from the per-image
            mean over channels and pixels.
        crop_pad: translation by integer shifts in ``[-p, p]`` pixels on each
            axis, ``p = int(crop_pad * S + 0.5)``, zero fill.
        cutout: a zeroed square of side ``int(cutout * S + 0.5)`` pixels.
        flip_prob: probability of a horizontal flip.
        scale: ``sx, sy ~ U(1 / scale, scale)`` independently (``> 1`` samples
            a larger area, i.e. shrinks the content).
        rotate: angle ~ U(-rotate, rotate) in degrees (positive is
            anticlockwise on screen).

    Raises:
        UserError: an unknown or empty family (the message lists the valid
            ones), a negative magnitude, ``flip_prob`` outside [0, 1],
            ``cutout > 1`` or ``scale < 1``.
    """

    strategy: str = DEFAULT_STRATEGY
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop_pad: float = 0.125
    cutout: float = 0.5
    flip_prob: float = 0.5
    scale: float = 1.2
    rotate: float = 15.0

    def __post_init__(self) -> None:
        for part in self.strategy.split("_"):
            if part not in FAMILIES:
                raise UserError(f"DSA strategy {self.strategy!r}: unknown family {part!r}; "
                                f"valid families are {', '.join(FAMILIES)} joined by '_'")
        for name in ("brightness", "saturation", "contrast", "crop_pad", "cutout", "flip_prob", "scale",
                     "rotate"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UserError(f"DSA {name} must be a finite number >= 0, got {value}")
        if self.flip_prob > 1:
            raise UserError(f"DSA flip_prob must be in [0, 1], got {self.flip_prob}")
        if self.cutout > 1:
            raise UserError(f"DSA cutout is a fraction of the side, at most 1, got {self.cutout}")
        if self.scale < 1:
            raise UserError(f"DSA scale draws from [1/scale, scale] and must be >= 1, got {self.scale}")

    @property
    def families(self) -> tuple[str, ...]:
        """The strategy's parts in order, repeats kept."""
        return tuple(self.strategy.split("_"))


@dataclass(frozen=True)
class DSADraw:
    """One call's random parameters: the family and its values.

    ``values`` maps names to 1-D tensors of length ``n`` (one entry per image)
    or 1 (``shared``: one parameter set for any batch), on the generator's
    device:

    * ``color``: ``brightness`` (additive offset), ``saturation`` and
      ``contrast`` (factors), float32.
    * ``crop``: ``dx``, ``dy``, int64 pixels; content moves right by ``dx``
      and down by ``dy``, vacated pixels are 0.
    * ``cutout``: ``cy``, ``cx`` (centre row and column), ``size`` (side),
      int64 pixels; the zeroed rows are ``[cy - size//2, cy - size//2 + size)``
      clipped to the image, likewise the columns.
    * ``flip``: ``flip``, bool.
    * ``scale``: ``sx`` (width axis), ``sy`` (height axis), float32; the output
      at normalised position (u, v) samples the input at (sx u, sy v).
    * ``rotate``: ``angle``, float32 degrees, positive anticlockwise on screen.

    ``side`` is the image side S in pixels the draw was made for.
    """

    family: str
    side: int
    shared: bool
    values: dict[str, torch.Tensor]

    @property
    def n(self) -> int:
        """Images the draw covers: 1 when shared."""
        return len(next(iter(self.values.values())))

    def take(self, index: torch.Tensor) -> DSADraw:
        """The per-image draw whose image i gets entry ``index[i]`` of this draw's values
        (``index`` ``[N]`` int64, any device): a draw made per class, given each
        image's class, becomes a per-image draw that is siamese within each class."""
        return DSADraw(family=self.family, side=self.side, shared=False,
                       values={name: t[index.to(t.device)] for name, t in self.values.items()})


def _uniform(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device)


def _randint(low: int, high: int, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(low, high, (n,), generator=generator, device=generator.device)


def _draw_values(params: DSAParams, family: str, k: int, side: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``k`` random parameter sets of one ``family`` (see :class:`DSADraw`), from ``generator``."""
    if family == "color":
        values = {"brightness": (_uniform(k, generator) - 0.5) * params.brightness,
                  "saturation": _uniform(k, generator) * params.saturation,
                  "contrast": _uniform(k, generator) + params.contrast}
    elif family == "crop":
        shift = int(side * params.crop_pad + 0.5)
        values = {"dx": _randint(-shift, shift + 1, k, generator), "dy": _randint(-shift, shift + 1, k, generator)}
    elif family == "cutout":
        size = int(side * params.cutout + 0.5)
        # DSA's centre range: 0..S inclusive for an even size, 0..S-1 for an odd one.
        high = side + 1 - size % 2
        values = {"cy": _randint(0, high, k, generator), "cx": _randint(0, high, k, generator),
                  "size": torch.full((k,), size, dtype=torch.int64, device=generator.device)}
    elif family == "flip":
        values = {"flip": _uniform(k, generator) < params.flip_prob}
    elif family == "scale":
        low = 1.0 / params.scale
        values = {"sx": _uniform(k, generator) * (params.scale - low) + low,
                  "sy": _uniform(k, generator) * (params.scale - low) + low}
    else:
        values = {"angle": (_uniform(k, generator) - 0.5) * 2 * params.rotate}
    return values


def draw_params(params: DSAParams, n: int, side: int, generator: torch.Generator, *,
                shared: bool = False) -> DSADraw:
    """Draw one DSA call's parameters (Zhao & Bilen, ICML 2021: the authors' ``DiffAugment``,
    mode 'S'; no equation number on record) for a batch of ``n`` images of side ``side``.

    The family is drawn first (uniform over ``params.families``), then its
    values, all from ``generator`` (CPU or CUDA; the values live on its device).

    Args:
        params: strategy and magnitudes.
        n: images in the batch (>= 1); the values have length ``n``, or 1 when
            ``shared``.
        side: image side S in pixels (>= 1); sets the shift range and the
            cutout size (DSA rounds half up: ``int(ratio * S + 0.5)``).
        generator: source of all randomness.
        shared: one parameter set for all images (DSA's siamese mode).

    Returns:
        A :class:`DSADraw` for :func:`apply_draw`.

    Raises:
        ValueError: ``n`` or ``side`` below 1.
    """
    if n < 1 or side < 1:
        raise ValueError(f"draw_params needs n >= 1 and side >= 1, got n={n}, side={side}")
    families = params.families
    family = families[int(_randint(0, len(families), 1, generator)[0])]
    values = _draw_values(params, family, 1 if shared else n, side, generator)
    return DSADraw(family=family, side=side, shared=shared, values=values)


def _cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Zero image i's square of side ``size[i]`` centred at ``(cy[i], cx[i])`` (rows
    ``[cy - size//2, cy - size//2 + size)`` clipped to the image, likewise the columns; int64
    ``[N]``): one mask and one select for the whole batch (torchvision's ``erase`` takes
    one box per call)."""
    n, _, h, w = x.shape
    top, left = (cy - size // 2).view(-1, 1), (cx - size // 2).view(-1, 1)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    hit = (((rows >= top) & (rows < top + size.view(-1, 1))).view(n, 1, h, 1)
           & ((cols >= left) & (cols < left + size.view(-1, 1))).view(n, 1, 1, w))
    return torch.where(hit, x.new_zeros(()), x)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 0:  # affine_grid refuses an empty batch
        return x.clone()
    theta = theta.expand(x.shape[0], 2, 3)
    grid = nnf.affine_grid(theta, list(x.shape), align_corners=True)
    return nnf.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def apply_draw(x: torch.Tensor, draw: DSADraw) -> torch.Tensor:
    """Apply ``draw`` to ``x``: DSA's differentiable transform at fixed parameters (Zhao &
    Bilen, ICML 2021; no equation number on record).

    Args:
        x: ``[N, C, S, S]`` floating point, normalised space, S == ``draw.side``;
            N == ``draw.n`` unless the draw is shared (then any N).
        draw: from :func:`draw_params`.

    Returns:
        ``[N, C, S, S]``, same dtype and device, differentiable w.r.t. ``x``
        (translated-out, cut-out and sampled-outside pixels get zero gradient).

    Raises:
        ValueError: ``x`` is not a batch of square images of side
            ``draw.side``, or a per-image draw covers a different N.
    """
    if x.ndim != 4 or x.shape[-2:] != (draw.side, draw.side) or not x.is_floating_point():
        raise ValueError(f"DSA expects float [N, C, {draw.side}, {draw.side}] images, "
                         f"got {x.dtype} {list(x.shape)}")
    if not draw.shared and draw.n != x.shape[0]:
        raise ValueError(f"DSA draw is for {draw.n} images, the batch has {x.shape[0]}")
    v = {name: t.to(x.device).expand(x.shape[0]) for name, t in draw.values.items()}
    if draw.family == "color":
        x = x + v["brightness"].to(x.dtype).view(-1, 1, 1, 1)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * v["saturation"].to(x.dtype).view(-1, 1, 1, 1) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * v["contrast"].to(x.dtype).view(-1, 1, 1, 1) + mean
    if draw.family == "crop":
        return shift_images(x, v["dx"], v["dy"])
    if draw.family == "cutout":
        return _cutout(x, v["cy"], v["cx"], v["size"])
    if draw.family == "flip":
        return torch.where(v["flip"].view(-1, 1, 1, 1), tvf.horizontal_flip(x), x)
    if draw.family == "scale":
        sx, sy = v["sx"].to(x.dtype), v["sy"].to(x.dtype)
        zero = torch.zeros_like(sx)
        rows = ([sx, zero, zero], [zero, sy, zero])
    else:
        rad = torch.deg2rad(v["angle"].to(x.dtype))
        cos, sin, zero = torch.cos(rad), torch.sin(rad), torch.zeros_like(rad)
        rows = ([cos, -sin, zero], [sin, cos, zero])
    return _warp(x, torch.stack([torch.stack(row, 1) for row in rows], 1))


def siamese(real: torch.Tensor, syn: torch.Tensor, params: DSAParams,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DSA's siamese augmentation (Zhao & Bilen, ICML 2021; no equation number on record):
    one shared draw applied to a class's real and synthetic batches, as DM (Zhao & Bilen,
    WACV 2023) does per class and iteration.

    Args:
        real: ``[N_real, C, S, S]`` float, normalised.
        syn: ``[N_syn, C, S, S]`` float, normalised (typically requires grad).
        params: strategy and magnitudes.
        generator: source of the draw.

    Returns:
        ``(real_aug, syn_aug)`` with the input shapes; gradients flow to ``syn``
        (and ``real`` if it requires them).

    Raises:
        ValueError: either batch is not ``[N, C, S, S]`` float with the side
            of ``real``.
    """
    draw = draw_params(params, real.shape[0], real.shape[-1], generator, shared=True)
    return apply_draw(real, draw), apply_draw(syn, draw)


@dataclass(frozen=True)
class ClassDraws:
    """One siamese DSA draw per class of a batch (DM's per-class augmentation, Zhao & Bilen,
    WACV 2023), held so that the whole batch is augmented in a fixed number of operations.

    Attributes:
        family: ``[G]`` int64 on the CPU, class j's family as an index into ``draws``.
        draws: one :class:`DSADraw` per distinct family of the strategy (in
            :data:`FAMILIES` order), with values for each of the G classes.
    """

    family: torch.Tensor
    draws: tuple[DSADraw, ...]


def draw_per_class(params: DSAParams, groups: int, side: int, generator: torch.Generator) -> ClassDraws:
    """Draw, for each of ``groups`` classes, one family (uniform over ``params.families``, as
    :func:`draw_params`) and that family's values: the distribution of ``groups`` calls of
    :func:`draw_params` with ``shared=True``, drawn as a fixed number of random calls (the
    family choice, then every family's values for all classes), so the numbers differ from
    those calls' for the same generator state.

    Raises:
        ValueError: ``groups`` or ``side`` below 1.
    """
    if groups < 1 or side < 1:
        raise ValueError(f"draw_per_class needs groups >= 1 and side >= 1, got groups={groups}, side={side}")
    parts = params.families
    families = tuple(f for f in FAMILIES if f in parts)
    part = _randint(0, len(parts), groups, generator).cpu()
    family = torch.tensor([families.index(p) for p in parts])[part]
    return ClassDraws(family=family, draws=tuple(
        DSADraw(family=f, side=side, shared=False, values=_draw_values(params, f, groups, side, generator))
        for f in families))


def apply_per_class(x: torch.Tensor, draws: ClassDraws, group: torch.Tensor) -> torch.Tensor:
    """Apply class ``group[i]``'s draw of ``draws`` to image ``i`` of ``x [N, C, S, S]``
    (float, normalised; ``group`` ``[N]`` int64 on the CPU): the images are ordered by
    family, each family's images go through :func:`apply_draw` once (an empty one too, so
    that the operations are nearly the same for any batch: an empty scale or rotate group
    costs a copy instead of the warp), and one gather restores the order.
    Returns ``[N, C, S, S]``, differentiable w.r.t. ``x``. Raises as :func:`apply_draw`."""
    image_family = draws.family[group]
    order = torch.argsort(image_family, stable=True)
    counts = torch.bincount(image_family, minlength=len(draws.draws)).tolist()
    pieces = x[order.to(x.device)].split(counts)
    indices = group[order].split(counts)
    out = [apply_draw(piece, draw.take(index)) for piece, draw, index in zip(pieces, draws.draws, indices)]
    return torch.cat(out)[torch.argsort(order).to(x.device)]


def siamese_per_class(real: torch.Tensor, real_sizes: list[int], syn: torch.Tensor, syn_sizes: list[int],
                      params: DSAParams, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`siamese` for every class of a batch in one call each for the real and the
    synthetic images (DSA, Zhao & Bilen, ICML 2021, per class as DM, Zhao & Bilen, WACV 2023,
    applies it): class j's ``real_sizes[j]`` real and ``syn_sizes[j]`` synthetic images share
    one draw of :func:`draw_per_class`; the real images are augmented without gradient.

    Args:
        real: ``[sum real_sizes, C, S, S]`` float, normalised, grouped by class.
        syn: ``[sum syn_sizes, C, S, S]`` float, normalised, grouped by class in the same order.

    Returns:
        ``(real_aug, syn_aug)`` with the input shapes; gradients flow to ``syn``.

    Raises:
        ValueError: the sizes disagree in length, or as :func:`apply_draw`.
    """
    if len(real_sizes) != len(syn_sizes):
        raise ValueError(f"{len(real_sizes)} real and {len(syn_sizes)} synthetic class sizes")
    draws = draw_per_class(params, len(real_sizes), real.shape[-1], generator)
    with torch.no_grad():
        real_aug = apply_per_class(real, draws, class_index(real_sizes))
    return real_aug, apply_per_class(syn, draws, class_index(syn_sizes))


def augment(x: torch.Tensor, params: DSAParams, generator: torch.Generator) -> torch.Tensor:
    """DSA (Zhao & Bilen, ICML 2021) with per-image parameters (one family for the call), for
    training on a distilled set (the DM family's evaluation protocol, ``train --protocol dsa``).

    Args:
        x: ``[N, C, S, S]`` float, normalised.
        params: strategy and magnitudes.
        generator: source of the draw.

    Returns:
        ``[N, C, S, S]``, differentiable w.r.t. ``x``.

    Raises:
        ValueError: ``x`` is not a float batch ``[N, C, S, S]``.
    """
    return apply_draw(x, draw_params(params, x.shape[0], x.shape[-1], generator))


def draw_sequence(params: DSAParams, n: int, side: int, generator: torch.Generator, *,
                  shared: bool = False) -> list[DSADraw]:
    """One draw per family of ``params.strategy``, in the strategy's order.

    IDC's ``DiffAug`` (Kim et al., ICML 2022; DANCE's augmentation) applies ``color``,
    ``cutout`` and ``flip`` on every call and picks one of the remaining families,
    so for ``color_crop_cutout`` (DANCE's matching) and ``color_crop`` (its
    experts) every family is applied; this is that chain. Arguments as
    :func:`draw_params`.

    Returns:
        A list of :class:`DSADraw` for :func:`apply_sequence`.

    Raises:
        ValueError: ``n`` or ``side`` below 1.
    """
    return [draw_params(DSAParams(**{**params.__dict__, "strategy": family}), n, side, generator, shared=shared)
            for family in params.families]


def apply_sequence(x: torch.Tensor, draws: list[DSADraw]) -> torch.Tensor:
    """Apply :func:`draw_sequence`'s draws in order (IDC's ``DiffAug`` chain, Kim et al.,
    ICML 2022): ``[N, C, S, S]`` -> the same shape, differentiable w.r.t. ``x``. Raises as
    :func:`apply_draw`."""
    for draw in draws:
        x = apply_draw(x, draw)
    return x
