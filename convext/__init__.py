"""convext: hand-written convolution and pooling kernels for PyTorch, drop-in for torch.nn.

    import convext
    y = convext.functional.conv2d(x, w, b, stride=2, padding=1)   # as torch.nn.functional
    layer = convext.nn.Conv2d(64, 128, 3, padding=1)               # as torch.nn
    model = convext.nn.convert(model)                              # swap a model's layers
"""
import torch

try:
    from . import _C
except ImportError as e:  # say why, never swallow: a silent fallback would hide a broken build
    raise ImportError(
        f"convext: its compiled extension convext._C could not be loaded: {e}. convext must be "
        f"built against the torch that is installed (torch {torch.__version__} here): rebuild it "
        "with `pip install --no-build-isolation .` in the convext source tree."
    ) from e

from . import _fakes  # noqa: F401  (registers the fake kernels used by torch.compile and export)
from . import functional, nn


def build_info() -> dict:
    """How convext was built: ``cuda`` (CUDA kernels compiled in), ``openmp``, ``torch`` (the
    version built against), ``cpu_isa`` (the SIMD level the CPU kernels use on this machine,
    capped by the CONVEXT_CPU_ISA environment variable) and ``cpu_isas_compiled``."""
    return _C.build_info()


__all__ = ["build_info", "functional", "nn"]
__version__ = "0.1.0"
