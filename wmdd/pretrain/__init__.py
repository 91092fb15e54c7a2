"""Stage 1 (squeeze): train a teacher on the real train split, then record its
per-class BatchNorm statistics (WMDD Sec. III-D). Run with ``python -m wmdd.pretrain``."""
