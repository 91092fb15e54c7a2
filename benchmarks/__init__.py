"""Performance and quality benchmarks (not run by CI's test step); results with
their commands go to ``benchmarks/RESULTS.md``."""
