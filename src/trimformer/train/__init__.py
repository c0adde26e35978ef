"""Training: the shared loop on Accelerate, FLOPs calibration, losses and fine-tuning."""
