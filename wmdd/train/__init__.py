"""Stage 4 (train): train a student from scratch on the distilled images with
the recorded views and soft labels (or online-teacher / hard labels, or a full
real dataset with pseudo-labels from a CSV) and evaluate it on the real
validation split. Run with ``python -m wmdd.train``."""
