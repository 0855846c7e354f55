"""Test-session settings: tiny CPU models run fastest (and timing-independent) on one thread."""

import torch

torch.set_num_threads(1)
