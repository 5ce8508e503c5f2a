"""Checkpoint conversion (paper Algorithm 1): hub GPT-NeoX/LLaMA checkpoints, our own teachers, hybrids."""
