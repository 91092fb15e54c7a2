"""``--factor``: multi-formation storage for the methods that offer it (DANCE, the
random-real baseline at the same pixel budget, and the barycenter methods WMDD,
SRe2L and medoids, :class:`wmdd.recover.methods.wmdd.BarycenterMethod`).

A method that subclasses :class:`MultiFormation` stores each image as a
``factor x factor`` grid of tiles (:mod:`wmdd.recover.multiformation`), starts each
stored image from ``factor**2`` seeded real images of its class, downsampled
into the tiles, and records the factor in its manifest: the train stage
(``--protocol dsa``/``dance``) decodes with it (and refuses another
``--factor``), relabel and FKD training refuse a factor above 1, and
:mod:`wmdd.tools.decode_images` writes the decoded images as an ordinary set.
"""

from __future__ import annotations

import argparse

import torch

from wmdd.options.bounds import COUNT
from wmdd.recover.methods.registry import RecoverMethod, Resources
from wmdd.recover.multiformation import encode, tile_side


def factor(args: argparse.Namespace) -> int:
    """``--factor``, 1 when unset (DANCE and WMDD set it by default; the others leave it
    unset, so that the arguments recorded by their runs from before the option existed
    still match)."""
    return args.factor or 1


class MultiFormation(RecoverMethod):
    """Mixin of ``--factor``: IDC's multi-formation (Kim et al., ICML 2022, Sec. 3.1), as
    DANCE uses it (DANCE's and WMDD's ``defaults`` set 2; unset means 1)."""

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--factor", type=COUNT, help="multi-formation factor: factor x factor tiles per "
                                                      "stored image, each from its own real image (1: off) "
                                                      "[dance, wmdd 2; the others 1]")

    @classmethod
    def real_per_image(cls, args: argparse.Namespace) -> int:
        return factor(args) ** 2

    @classmethod
    def check_resources(cls, res: Resources) -> None:
        """Raises:
            UserError: the input side is not divisible by ``--factor``
                (:func:`wmdd.recover.multiformation.tile_side`).
        """
        super().check_resources(res)
        tile_side(res.input_size, factor(res.args))

    def initial_images(self, real: torch.Tensor) -> torch.Tensor:
        """IDC's initialisation from real images (block-averaged, IDC: nearest neighbour):
        ``factor**2`` real images per stored image, downsampled into its tiles
        (``[G * ipc * factor**2, 3, S, S]`` -> ``[G * ipc, 3, S, S]``, :func:`wmdd.recover.multiformation.encode`)."""
        return encode(real, factor(self.res.args))

    def manifest_fields(self) -> dict:
        args = self.res.args
        return {"factor": factor(args), "decoded_images": args.ipc * factor(args) ** 2 * len(self.res.classes)}
