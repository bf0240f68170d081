"""Training: recipes (config), data, the accelerate loop, run checkpoints, and the pretrain and finetune jobs."""
