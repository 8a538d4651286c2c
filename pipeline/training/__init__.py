"""Training a planned U-Net: patch sampling and augmentation, losses, the optimiser, the training step and its
probe, checkpoints, data parallelism under torchrun, and cross-validation. Nothing here imports tracking: the
trainer is handed a run log."""
