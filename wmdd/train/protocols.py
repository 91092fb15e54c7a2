"""The train stage's evaluation protocols, registered (:class:`wmdd.options.variants.VariantRegistry`):
each brings its option defaults and owns the options that only it accepts.

* ``fkd``: the decoupled (SRe2L/WMDD) protocol: recorded views with soft labels (FKD), an online
  teacher or hard labels, or a full real split with pseudo labels.
* ``dsa``: DM (Zhao & Bilen 2023): distilled sets on the ConvNet, hard labels, DSA on every batch.
* ``dance``: DANCE (Zhang et al. 2024; IDC's evaluation): ``dsa`` with CutMix (p 0.5), batch 64,
  1,500 epochs, lr x0.2 at 2/3 and 5/6, and no cutout in DSA (the authors drop it when CutMix is
  on). Both DSA protocols decode multi-formation sets with the factor their recover run recorded
  (:func:`wmdd.train.student.resolve_factor`).
"""

from __future__ import annotations

from wmdd.options.variants import Variant, VariantRegistry
from wmdd.recover.dsa import DEFAULT_STRATEGY

PROTOCOLS = VariantRegistry("--protocol")

#: Options of the recorded-view (FKD) protocol: label sources other than folder labels and the views.
FKD_OPTIONS = ("soft_labels", "online_teacher", "teacher", "hard_labels", "temperature", "kd_weight", "train_dir",
               "pseudo_label_csv", "allow_unmatched", "min_scale_crops", "max_scale_crops", "mix_type", "mix_alpha")
#: Options of the DSA protocols.
DSA_OPTIONS = ("dsa_strategy", "cutmix_prob", "factor")

PROTOCOLS.register(Variant("fkd", {"temperature": 20.0, "kd_weight": 1.0}, FKD_OPTIONS,
                           "the decoupled protocol: recorded views, soft labels (or online teacher, hard labels, "
                           "pseudo labels)"))
_DSA = {"model": "convnet_in", "opt": "sgd", "lr": 0.01, "momentum": 0.9, "wd": 5e-4, "lr_scheduler": "half",
        "batch_size": 256, "epochs": 1000, "dsa_strategy": DEFAULT_STRATEGY, "cutmix_prob": 0.0}
PROTOCOLS.register(Variant("dsa", _DSA, DSA_OPTIONS,
                           "the DM family's: hard labels, DSA on every batch, convnet_in, SGD lr 0.01, lr x0.1 at "
                           "half the epochs, batch 256, 1,000 epochs"))
PROTOCOLS.register(Variant("dance", {**_DSA, "epochs": 1500, "batch_size": 64, "lr_scheduler": "multistep",
                                     "cutmix_prob": 0.5, "dsa_strategy": "color_crop_flip_scale_rotate"}, DSA_OPTIONS,
                           "dsa + CutMix 0.5, batch 64, 1,500 epochs, lr x0.2 at 2/3 and 5/6, DSA without cutout"))

#: Protocols trained by the DSA label source (:class:`wmdd.train.sources.DSAImages`).
DSA_PROTOCOLS = tuple(name for name in PROTOCOLS.names() if PROTOCOLS[name].options == DSA_OPTIONS)
