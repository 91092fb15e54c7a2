"""WMDD: dataset distillation via the Wasserstein metric (Liu et al., ICCV 2025, arXiv 2311.18531),
with the DM family (DM, Decomposed DM, DANCE) and random-real baselines behind one method registry.

The pipeline is four stages that talk through disk: ``wmdd pretrain`` -> ``wmdd recover`` ->
``wmdd relabel`` -> ``wmdd train``; ``wmdd run`` chains them (``wmdd --help`` lists every command).
"""

__version__ = "0.3.0"
