"""Test-wide settings: never reach the network; keep runs deterministic and quiet."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

# The tests use tiny tensors: one thread is faster than two here (less synchronisation), and
# leaves the second core to pytest's own work.
torch.set_num_threads(1)
