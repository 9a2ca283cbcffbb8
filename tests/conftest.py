import os
import sys

import pytest

# The tests import their shared helpers as a top-level module.
sys.path.insert(0, os.path.dirname(__file__))

from utils import tf32_convolutions  # noqa: E402


@pytest.fixture(autouse=True)
def strict_float32():
    """Float32 convolutions without TF32 in every test: torch's CUDA convolutions and convext's
    both follow torch.backends.cudnn.allow_tf32 (default True), and the tests hold float32 to
    float32 tolerances. The TF32 tests turn it back on themselves."""
    with tf32_convolutions(False):
        yield
