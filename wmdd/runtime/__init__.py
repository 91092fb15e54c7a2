"""What every training loop shares: device choice, ``torchrun`` process groups, seeds, optimisers,
schedules, evaluation and checkpoints."""
