"""convext's kernels behind torch.nn.functional's signatures: same arguments, defaults, positional
order, results, grads, memory formats and errors."""
import warnings
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _shape

__all__ = [
    "conv2d",
    "conv_transpose2d",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "max_unpool2d",
]


def _batched(input: Tensor, op_name: str):
    """Returns the 4-D input and whether it was unbatched (C, H, W)."""
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to {op_name}, but got input of size: "
            f"{list(input.shape)}"
        )
    return (input.unsqueeze(0), True) if input.dim() == 3 else (input, False)


def _check_weight_dim(input: Tensor, weight: Tensor, string_padding: bool):
    if weight.dim() == 4:
        return
    # torch picks the conv's dimensionality from the weight and so reports a weight of another
    # rank through the argument that does not fit it.
    if string_padding:
        raise RuntimeError(
            f"Expected {weight.dim()}-dimensional input for {weight.dim()}-dimensional weight "
            f"{list(weight.shape)}, but got {input.dim()}-dimensional input of size "
            f"{list(input.shape)} instead"
        )
    raise RuntimeError(
        f"expected stride to be a single integer value or a list of {weight.dim() - 2} values to "
        f"match the convolution dimensions, but got stride=[1, 1]"
    )


def _int_pair(op_name: str, name: str, value) -> Sequence[int]:
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if not isinstance(v, (int, torch.SymInt)):
                raise TypeError(
                    f"{op_name}(): argument '{name}' must be tuple of ints, but found element of "
                    f"type {type(v).__name__} at pos {i}"
                )
    elif not isinstance(value, (int, torch.SymInt)):
        raise TypeError(
            f"{op_name}(): argument '{name}' must be tuple of ints, not {type(value).__name__}"
        )
    return _shape.conv_pair(name, value)


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           stride: Union[int, Sequence[int]] = 1,
           padding: Union[int, Sequence[int], str] = 0,
           dilation: Union[int, Sequence[int]] = 1, groups: int = 1) -> Tensor:
    """Same as :func:`torch.nn.functional.conv2d`, computed by convext."""
    string_padding = isinstance(padding, str)
    _check_weight_dim(input, weight, string_padding)
    x, unbatched = _batched(input, "conv2d")
    stride = _int_pair("conv2d", "stride", stride)
    dilation = _int_pair("conv2d", "dilation", dilation)
    if string_padding:
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise RuntimeError("padding='same' is not supported for strided convolutions")
            pads = _shape.same_padding(weight.shape[2:], dilation)
            padding = tuple(left for left, _ in pads)
            extra = [right - left for left, right in pads]
            if any(extra):
                warnings.warn(
                    "Using padding='same' with even kernel lengths and odd dilation may require "
                    "a zero-padded copy of the input be created"
                )
                # The kernels pad symmetrically; the odd pixel goes right/bottom, as in torch.
                x = F.pad(x, [0, extra[1], 0, extra[0]])
        else:
            raise RuntimeError(f"Invalid padding string: '{padding}'")
    else:
        padding = _int_pair("conv2d", "padding", padding)
    out = torch.ops.convext.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: Union[int, Sequence[int]] = 1,
                     padding: Union[int, Sequence[int]] = 0,
                     output_padding: Union[int, Sequence[int]] = 0, groups: int = 1,
                     dilation: Union[int, Sequence[int]] = 1) -> Tensor:
    """Same as :func:`torch.nn.functional.conv_transpose2d`, computed by convext."""
    _check_weight_dim(input, weight, False)
    x, unbatched = _batched(input, "conv_transpose2d")
    args = [
        _int_pair("conv_transpose2d", name, value)
        for name, value in (("stride", stride), ("padding", padding),
                            ("output_padding", output_padding), ("dilation", dilation))
    ]
    stride, padding, output_padding, dilation = args
    out = torch.ops.convext.conv_transpose2d(x, weight, bias, stride, padding, output_padding,
                                             groups, dilation)
    return out.squeeze(0) if unbatched else out


# --- pooling -------------------------------------------------------------------------------

def _pool_stride(stride, kernel_size):
    """None, [] and () all mean "the kernel size", as in torch."""
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        return _shape.pool_pair(kernel_size)
    return _shape.pool_pair(stride)


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Same as :func:`torch.nn.functional.max_pool2d` (note: ``ceil_mode`` comes before
    ``return_indices``), computed by convext. Indices are int64 offsets into each H*W plane."""
    args = (input, _shape.pool_pair(kernel_size), _pool_stride(stride, kernel_size),
            _shape.pool_pair(padding), _shape.pool_pair(dilation), ceil_mode)
    if return_indices:
        return torch.ops.convext.max_pool2d_with_indices(*args)
    return torch.ops.convext.max_pool2d(*args)


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None) -> Tensor:
    """Same as :func:`torch.nn.functional.avg_pool2d`, computed by convext."""
    if input.dim() < 3:
        # torch indexes dim -3 before checking the rank, and so raises this.
        raise IndexError(f"Dimension out of range (expected to be in range of [{-max(input.dim(), 1)}, "
                         f"{max(input.dim(), 1) - 1}], but got -3)")
    return torch.ops.convext.avg_pool2d(
        input, _shape.pool_pair(kernel_size), _pool_stride(stride, kernel_size),
        _shape.pool_pair(padding), ceil_mode, count_include_pad, divisor_override)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Same as :func:`torch.nn.functional.adaptive_avg_pool2d`, computed by convext; an output
    of 1x1 takes the global average pooling path."""
    return torch.ops.convext.adaptive_avg_pool2d(input, _shape.adaptive_output_size(output_size, input))


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False):
    """Same as :func:`torch.nn.functional.adaptive_max_pool2d`, computed by convext."""
    out, indices = torch.ops.convext.adaptive_max_pool2d(input, _shape.adaptive_output_size(output_size, input))
    return (out, indices) if return_indices else out


def max_unpool2d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    """Same as :func:`torch.nn.functional.max_unpool2d`, computed by convext."""
    kernel_size = _shape.pool_pair(kernel_size)
    stride = _shape.pool_pair(stride) if stride is not None else kernel_size
    size = _shape.unpool_output_size(input, kernel_size, stride, _shape.pool_pair(padding),
                                     output_size)
    return torch.ops.convext.max_unpool2d(input, indices, size)
