"""Training: the typed config, model builders, the recipe and its engines, checkpoints, progress."""
