"""Training: the accelerate loop with exact resume, stage-1 pre-training, stage-2 fine-tuning."""
