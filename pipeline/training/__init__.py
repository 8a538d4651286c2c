"""Training a planned U-Net: patch sampling and augmentation, losses, the optimiser, the training step and its
probe, checkpoints, and data parallelism under torchrun. Nothing here imports tracking: the trainer is handed a
run log (``pipeline.stages.train`` hands it MLflow's)."""
