"""Helpers shared by the test files: devices, layouts, reference comparison, grads."""
import contextlib

import pytest
import torch

# Every device a parity test runs on; CUDA is skipped (not dropped) where there is none.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]

FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def make_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as t, laid out as asked ('strided': a non-contiguous view)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        # Every other element of a larger tensor, H and W swapped in memory.
        big = torch.zeros(t.shape[0], t.shape[1], t.shape[3], 2 * t.shape[2], dtype=t.dtype,
                          device=t.device)
        view = big[..., ::2].transpose(2, 3)
        view.copy_(t)
        assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
        return view
    raise ValueError(layout)


def tolerances(dtype: torch.dtype):
    """(rtol, atol) against a float64 reference fed the same (rounded) inputs: only the
    accumulation and the final rounding to dtype differ."""
    return {
        torch.float64: (1e-10, 1e-10),
        torch.float32: (1e-4, 1e-4),
        torch.float16: (4e-3, 4e-3),
        torch.bfloat16: (2e-2, 2e-2),
    }[dtype]


def assert_close_to_reference(actual: torch.Tensor, reference: torch.Tensor):
    """actual (any float dtype) against a float64 reference, scaled to the reference's size."""
    rtol, atol = tolerances(actual.dtype)
    finite = reference[reference.isfinite()]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(actual.double(), reference, rtol=rtol, atol=atol * scale,
                               equal_nan=True)


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors of the same shape have the same memory format."""
    return (a.is_contiguous(), a.is_contiguous(memory_format=torch.channels_last)) == (
        b.is_contiguous(), b.is_contiguous(memory_format=torch.channels_last))


def outputs_and_grads(fn, tensors, grad_output=None):
    """fn(*tensors) and the grads of every tensor that requires grad, for one grad_output
    (random, fixed by seed, when not given)."""
    out = fn(*tensors)
    if grad_output is None:
        grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(7),
                                  dtype=torch.float64).to(out.dtype)
    wrt = [t for t in tensors if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, wrt, grad_output) if wrt else ()
    return out, list(grads), grad_output


def leaf(t: torch.Tensor, dtype=None, requires_grad=True) -> torch.Tensor:
    """A detached leaf copy of t (layout kept), optionally converted."""
    if dtype is not None:
        t = t.to(dtype)
    return t.detach().clone(memory_format=torch.preserve_format).requires_grad_(requires_grad)


@contextlib.contextmanager
def tf32_convolutions(allowed: bool):
    """torch.backends.cudnn.allow_tf32, which torch's and convext's CUDA convolutions follow, set
    for the block and restored after it. Set through torch._C: torch's own test utilities (which
    the OpInfo tests import) make the torch.backends.cudnn setters raise."""
    saved = torch._C._get_cudnn_allow_tf32()
    torch._C._set_cudnn_allow_tf32(allowed)
    try:
        yield
    finally:
        torch._C._set_cudnn_allow_tf32(saved)
