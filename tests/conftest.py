"""Settings for every unit test."""

import torch
from hypothesis import settings

# The tests use tiny tensors: a second thread only adds contention, and on a busy machine it makes small torch
# operations ten times slower.
torch.set_num_threads(1)

# Property tests draw the same examples on every run, so that CI cannot fail on a draw nobody has seen; a developer
# can explore new draws with `pytest --hypothesis-profile=explore`.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci")
