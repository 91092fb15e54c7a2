"""Stage 2 (recover): synthesise IPC images per class by matching the teacher's
features to the class's Wasserstein barycenter, with per-class BatchNorm
regularisation (WMDD Eq. 5-7). Run with ``python -m wmdd.recover``."""
