"""Training: the run (config, loop, checkpoints), objectives, conversion recipes, LR schedules."""
