"""Settings for every unit test."""

import torch

# The tests use tiny tensors: a second thread only adds contention, and on a busy machine it makes small torch
# operations ten times slower.
torch.set_num_threads(1)
