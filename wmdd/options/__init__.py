"""Command-line plumbing shared by every stage: one-line errors (``run_main``, ``StageParser``),
range-checked option types and YAML presets."""
