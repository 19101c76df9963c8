"""Models, objectives, train/eval steps, checkpoints and the training loop."""
