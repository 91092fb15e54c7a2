"""Stage 3 (relabel): FKD soft labels. For every student epoch, fix the batches,
crops, flips and mixes, run the teacher on exactly those views and store its
top-k logits. Run with ``python -m wmdd.relabel``."""
