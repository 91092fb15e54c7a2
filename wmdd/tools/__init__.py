"""Small command-line tools beside the pipeline: pseudo-label CSVs, run
summaries and result plots."""
