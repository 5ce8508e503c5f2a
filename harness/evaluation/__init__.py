"""Evaluation with lm-eval: the paper's tasks offline, held-out bits per byte, standard errors."""
